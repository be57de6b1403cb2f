"""TensorRT vision encoder and TensorRT-LLM language model: clear errors, argument mapping, prompt table (CPU),
and parity with the ONNX Runtime / torch backends on a GPU (skipped without CUDA, tensorrt, tensorrt_llm)."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import threading

import numpy as np
import pytest
import torch

from videoneva.errors import CheckpointError, PromptError, VideoNevaError
from videoneva.generation import SamplingSettings
from videoneva.runtime import engine as engine_mod
from videoneva.runtime import tensorrt_backend as trt_b
from videoneva.runtime import trtllm_backend as llm_b
from videoneva.runtime.base import fake_media_ids

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None
HAS_MODELOPT = importlib.util.find_spec("modelopt") is not None
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason="needs the tensorrt Python package (NVIDIA's wheels; "
                                                            "not installable on the CPU build machines)")
needs_trtllm = pytest.mark.skipif(not (HAS_TRTLLM and HAS_MODELOPT), reason="needs tensorrt_llm and nvidia-modelopt "
                                  "(tensorrt_llm is not installable on the CPU build machines)")

@pytest.fixture()
def no_module(monkeypatch):
    """Make `import name` fail as if the package were not installed."""
    def hide(*names):
        for n in names:
            monkeypatch.setitem(sys.modules, n, None)
    return hide


# -- availability: clear errors instead of ImportError tracebacks ------------------------------------------

def test_tensorrt_reason_names_the_missing_package(no_module):
    no_module("tensorrt")
    reason = trt_b.tensorrt_unavailable_reason()
    assert "`tensorrt` Python package is not installed" in reason


def test_cuda_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in trt_b.cuda_unavailable_reason()

    def broken():
        raise RuntimeError("driver too old")
    monkeypatch.setattr(torch.cuda, "is_available", broken)
    assert "driver too old" in trt_b.cuda_unavailable_reason()


def test_tensorrt_present_but_no_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", type(sys)("tensorrt"))  # an importable stand-in
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in trt_b.tensorrt_unavailable_reason()


def test_vision_encoder_missing_plan(tmp_path):
    with pytest.raises(CheckpointError, match="vision plan not found.*vision.backend=tensorrt"):
        trt_b.TensorRTVisionEncoder(tmp_path / "vision.plan", 64, 64)


def test_vision_encoder_without_tensorrt(tmp_path, no_module):
    no_module("tensorrt")
    (tmp_path / "vision.plan").write_bytes(b"not a plan")
    with pytest.raises(trt_b.BackendUnavailable, match="tensorrt") as err:
        trt_b.TensorRTVisionEncoder(tmp_path / "vision.plan", 64, 64)
    assert isinstance(err.value, VideoNevaError)  # the CLI prints it without a traceback


def test_trtllm_reason_names_the_missing_package(no_module):
    no_module("tensorrt_llm")
    assert "`tensorrt_llm` Python package is not installed" in llm_b.trtllm_unavailable_reason()


def test_trtllm_reason_tells_a_broken_install_from_a_missing_one(tmp_path, monkeypatch):
    """A tensorrt_llm whose import fails inside (as TensorRT-LLM <= 1.2 does next to transformers 5)."""
    pkg = tmp_path / "tensorrt_llm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from transformers import AutoModelForVision2Seq  # gone in transformers 5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt_llm", raising=False)
    reason = llm_b.trtllm_unavailable_reason()
    assert reason.startswith("tensorrt_llm is installed but broken") and "AutoModelForVision2Seq" in reason
    assert "not installed" not in reason and "transformers 5." in reason


def test_trtllm_reason_without_bindings(monkeypatch, no_module):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", type(sys)("tensorrt_llm"))
    no_module("tensorrt_llm.bindings")
    assert "C++ bindings" in llm_b.trtllm_unavailable_reason()


def test_language_model_missing_engine_then_missing_library(tmp_path, tiny_tokenizer, no_module):
    with pytest.raises(CheckpointError, match="config.json, rank0.engine.*llm.backend=tensorrt_llm"):
        llm_b.TensorRTLLMLanguageModel(tmp_path, tiny_tokenizer, 5)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "rank0.engine").write_bytes(b"")
    no_module("tensorrt_llm")
    with pytest.raises(llm_b.BackendUnavailable, match="tensorrt_llm"):
        llm_b.TensorRTLLMLanguageModel(tmp_path, tiny_tokenizer, 5)


# -- engine directory: backend selection and what is missing -----------------------------------------------

def _manifest(vision="tensorrt", llm="tensorrt_llm", skipped=True) -> dict:
    m = {"format_version": 1, "settings": {"vision": {"backend": vision}, "llm": {"backend": llm}}, "skipped": {}}
    if skipped:
        m["skipped"] = {"vision_plan": {"reason": "tensorrt is not installed", "command": ["trtexec", "--onnx=x"]},
                        "trtllm_engine": {"reason": "tensorrt_llm / CUDA not available here",
                                          "command": ["trtllm-build", "--checkpoint_dir", "c"]}}
    return m


def _eng(path, manifest):
    """An EngineDir as the reader would give it for this manifest (what the loaders take)."""
    from videoneva.checkpoint.settings import CheckpointSettings
    from videoneva.runtime.engine_dir import EngineDir

    built = manifest.get("settings", {})
    return EngineDir(path=path, manifest=manifest, settings=CheckpointSettings(num_frames=4), image_size=112,
                     patch_size=14, image_token_len=64, hidden_size=64, image_token_id=5, vocab_size=400,
                     max_context=1024, vision_backend=built.get("vision", {}).get("backend", "onnx"),
                     llm_backend=built.get("llm", {}).get("backend", "torch"))


def test_select_backends(tmp_path):
    assert _eng(tmp_path, _manifest()).backends("auto") == ("tensorrt", "tensorrt_llm")
    assert _eng(tmp_path, _manifest()).backends("cuda") == ("tensorrt", "tensorrt_llm")
    assert _eng(tmp_path, _manifest()).backends("cpu") == ("onnx", "torch")
    assert _eng(tmp_path, {"settings": {}}).backends("auto") == ("onnx", "torch")
    assert _eng(tmp_path, _manifest("onnx", "tensorrt_llm")).backends("auto") == ("onnx", "tensorrt_llm")
    assert _eng(tmp_path, _manifest("onnx", "onnx")).backends("auto") == ("onnx", "onnx")
    assert _eng(tmp_path, _manifest("tensorrt", "onnx")).backends("cpu") == ("onnx", "onnx")


def test_unknown_backend_in_the_manifest_is_refused(tmp_path, tiny_tokenizer):
    from videoneva.runtime.engine_dir import EngineDir

    d = _gpu_engine_dir(tmp_path, tiny_tokenizer)
    (d / "manifest.json").write_text(json.dumps(_manifest("openvino")))
    with pytest.raises(CheckpointError, match="vision.backend='openvino'"):
        EngineDir.read(d)


def test_load_vision_error_names_plan_reason_and_command(tmp_path, no_module):
    no_module("tensorrt")
    with pytest.raises(trt_b.BackendUnavailable) as err:
        engine_mod.load_vision(_eng(tmp_path, _manifest()), "tensorrt")
    msg = str(err.value)
    for part in ("vision/vision.plan is missing", "tensorrt is not installed", "trtexec --onnx=x",
                 "`tensorrt` Python package is not installed", "device=cpu"):
        assert part in msg, part


def test_load_llm_error_names_engine_reason_and_command(tmp_path, tiny_tokenizer, no_module):
    no_module("tensorrt_llm")
    with pytest.raises(trt_b.BackendUnavailable) as err:
        engine_mod.load_llm(_eng(tmp_path, _manifest()), "tensorrt_llm", tiny_tokenizer, "16")
    msg = str(err.value)
    for part in ("llm/trtllm_engine is missing", "trtllm-build --checkpoint_dir c", "`tensorrt_llm` Python package"):
        assert part in msg, part
    # the artifact is there but the library is not: only the library is named
    (tmp_path / "llm" / "trtllm_engine").mkdir(parents=True)
    with pytest.raises(trt_b.BackendUnavailable) as err:
        engine_mod.load_llm(_eng(tmp_path, _manifest()), "tensorrt_llm", tiny_tokenizer, "16")
    assert "is missing" not in str(err.value) and "tensorrt_llm" in str(err.value)


def _gpu_engine_dir(tmp_path, tokenizer):
    """An engine directory whose manifest asks for the GPU backends that a CPU build skipped."""
    from videoneva.checkpoint.native import CheckpointSettings

    d = tmp_path / "engine"
    for sub in ("vision", "llm/torch"):
        (d / sub).mkdir(parents=True)
    (d / "vision" / "vision.onnx").write_bytes(b"")
    tokenizer.save_pretrained(d / "tokenizer")
    (d / "manifest.json").write_text(json.dumps(_manifest()))
    media = {"settings": dataclasses.asdict(CheckpointSettings(num_frames=4)), "image_size": 112, "patch_size": 14,
             "image_token_len": 64, "hidden_size": 64, "image_token_id": 5}
    (d / "media.json").write_text(json.dumps(media))
    (d / "llm" / "torch" / "config.json").write_text(json.dumps({"vocab_size": 400, "max_position_embeddings": 1024}))
    return d


def test_infer_with_gpu_manifest_on_cpu_fails_cleanly(tmp_path, tiny_tokenizer, capsys, monkeypatch):
    from videoneva.cli import main as cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    d = _gpu_engine_dir(tmp_path, tiny_tokenizer)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"video": "clip.mp4", "text": "q", "question_id": 0}) + "\n")
    rc = cli(["infer", f"engine_dir={d}", f"prompt_file={prompts}", f"output_file={tmp_path / 'o.jsonl'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "asks for tensorrt" in err and "vision/vision.plan is missing" in err and "device=cpu" in err


# -- TensorRT vision helpers ------------------------------------------------------------------------------

def test_trt_dtype_names():
    assert trt_b.torch_dtype("FLOAT") is torch.float32
    assert trt_b.torch_dtype("HALF") is torch.float16
    assert trt_b.torch_dtype("BF16") is torch.bfloat16

    class FakeEnum:  # tensorrt.DataType members carry .name
        name = "HALF"
    assert trt_b.torch_dtype(FakeEnum()) is torch.float16
    with pytest.raises(CheckpointError, match="FP8"):
        trt_b.torch_dtype("FP8")


def test_frame_chunks_cover_every_frame_once():
    assert trt_b.frame_chunks(4, 8) == [slice(0, 4)]
    chunks = trt_b.frame_chunks(19, 8)
    assert [(s.start, s.stop) for s in chunks] == [(0, 8), (8, 16), (16, 19)]
    assert sum(s.stop - s.start for s in chunks) == 19
    with pytest.raises(ValueError):
        trt_b.frame_chunks(0, 8)


def test_pixel_shape_check():
    trt_b.check_pixel_shape((4, 3, 112, 112), (112, 112))
    for bad in [(3, 112, 112), (4, 1, 112, 112), (4, 3, 224, 224)]:
        with pytest.raises(ValueError, match=r"\[F, 3, 112, 112\]"):
            trt_b.check_pixel_shape(bad, (112, 112))


# -- TensorRT-LLM argument mapping ------------------------------------------------------------------------

def test_stop_rule_splits_end_strings(tiny_tokenizer):
    rule = llm_b.stop_rule(tiny_tokenizer, ["<extra_id_1>", "<extra_id_7>", "</s>"])
    assert rule.end_id == tiny_tokenizer.eos_token_id  # <extra_id_7>
    assert rule.pad_id == tiny_tokenizer.pad_token_id
    assert rule.stop_ids == [tiny_tokenizer.convert_tokens_to_ids("<extra_id_1>")]
    assert rule.stop_sequences == [tiny_tokenizer.encode("</s>", add_special_tokens=False)]
    assert len(rule.stop_sequences[0]) > 1
    assert rule.words_list() == [rule.stop_ids, rule.stop_sequences[0]]
    assert llm_b.stop_rule(tiny_tokenizer, []).words_list() is None


REQUEST_FIELDS = {"max_tokens", "streaming", "end_id", "pad_id", "stop_words", "sampling_config", "output_config"}
SAMPLING_CONFIG = {"top_k", "top_p", "temperature", "seed", "min_tokens", "repetition_penalty"}  # request.cpp names


def test_request_fields_greedy(tiny_tokenizer):
    s = SamplingSettings(max_tokens=12, greedy=True, repetition_penalty=1.0, seed=3, end_strings=["<extra_id_1>"])
    f = llm_b.request_fields(s, llm_b.stop_rule(tiny_tokenizer, s.end_strings), 12, streaming=False)
    c = f["sampling_config"]
    assert c["top_k"] == 1 and c["top_p"] == 0.0 and c["temperature"] == 1.0 and c["repetition_penalty"] == 1.0
    assert "seed" not in c and "min_tokens" not in c  # greedy needs no seed; 0 min tokens is the default
    assert f["max_tokens"] == 12 and not f["streaming"]
    assert f["stop_words"] == [[tiny_tokenizer.convert_tokens_to_ids("<extra_id_1>")]]
    assert f["output_config"] == {"return_log_probs": False, "exclude_input_from_output": True}
    assert set(f) == REQUEST_FIELDS and set(c) <= SAMPLING_CONFIG


def test_request_fields_sampling(tiny_tokenizer):
    s = SamplingSettings(max_tokens=64, min_tokens=4, greedy=False, temperature=0.7, top_k=20,
                         top_p=0.8, repetition_penalty=1.3, seed=11, return_log_probs=True, end_strings=[])
    f = llm_b.request_fields(s, llm_b.stop_rule(tiny_tokenizer, []), 10, streaming=True)
    c = f["sampling_config"]
    assert (c["top_k"], c["top_p"], c["temperature"], c["repetition_penalty"]) == (20, 0.8, 0.7, 1.3)
    assert c["min_tokens"] == 4 and c["seed"] == 11 and f["max_tokens"] == 10
    assert f["streaming"] and f["output_config"]["return_log_probs"] and f["stop_words"] is None
    assert f["end_id"] == tiny_tokenizer.eos_token_id and f["pad_id"] == tiny_tokenizer.pad_token_id


def test_media_extra_ids_tell_videos_apart():
    ids = [1, 448, 449, 450, 6]
    a, b = llm_b.media_extra_ids(ids, 448, "a" * 64), llm_b.media_extra_ids(ids, 448, "b" * 64)
    assert a[0] == a[-1] == 0 and len(set(a[1:4])) == 1 and a[1] > 0 and a[1] != b[1]
    assert a == llm_b.media_extra_ids(ids, 448, "a" * 64) and a[1] < 2**63
    assert llm_b.media_extra_ids([1, 2, 3], 448, "a" * 64) is None and llm_b.media_extra_ids(ids, 448, None) is None


def test_every_rank_engine_is_checked(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"pretrained_config": {"mapping": {"tp_size": 2, "pp_size": 2}}}))
    (tmp_path / "rank0.engine").write_bytes(b"")
    (tmp_path / "rank2.engine").write_bytes(b"")
    assert llm_b.engine_world_size(tmp_path) == 4
    with pytest.raises(CheckpointError, match="rank1.engine, rank3.engine"):
        llm_b.check_engine_dir(tmp_path)


# -- prompt table -----------------------------------------------------------------------------------------

def test_prompt_table_shape_dtype_and_rows():
    feats = torch.randn(4, 16, 64).reshape(-1, 64)  # (F·T, D), as Pipeline.features returns it
    table = llm_b.make_prompt_table(feats, 64, torch.float16, max_rows=128, device="cpu")  # (N, D) per request
    assert table.shape == (64, 64) and table.dtype == torch.float16
    torch.testing.assert_close(table.float(), feats, atol=1e-2, rtol=1e-3)
    assert llm_b.make_prompt_table(None, 64, torch.float16, 128, "cpu") is None
    with pytest.raises(ValueError, match="hidden size 32 does not match the engine's 64"):
        llm_b.make_prompt_table(torch.zeros(8, 32), 64, torch.float16, 128, "cpu")
    with pytest.raises(ValueError, match=r"\[rows, hidden\]"):
        llm_b.make_prompt_table(torch.zeros(2, 8, 64), 64, torch.float16, 128, "cpu")
    with pytest.raises(PromptError, match="--max_multimodal_len"):
        llm_b.make_prompt_table(torch.zeros(129, 64), 64, torch.float16, 128, "cpu")


def test_fake_ids_index_table_rows():
    ids = fake_media_ids([1, 7, 7, 7, 9], [1, 2, 3], vocab_size=448)
    assert ids == [1, 448, 449, 450, 9]
    llm_b.check_ids(ids, 448, rows=3)
    with pytest.raises(ValueError, match="row 2 outside the prompt table"):
        llm_b.check_ids(ids, 448, rows=2)
    with pytest.raises(ValueError, match="no prompt table"):
        llm_b.check_ids(ids, 448, rows=0)


# -- GPU: parity with the ONNX Runtime and torch backends --------------------------------------------------

@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("precision,atol", [("32", 1e-3), ("16", 5e-2)])
def test_tensorrt_vision_matches_onnx(tmp_path, precision, atol):
    from engine_build.vision import build_vision_plan, export_vision_onnx
    from videoneva.model.factory import TINY, new_llava
    from videoneva.runtime.onnx_vision import OnnxVisionEncoder

    llava = new_llava(dataclasses.replace(TINY, image_size=112), image_token_id=3)
    info = export_vision_onnx(llava, tmp_path / "vision.onnx", 112)
    build_vision_plan(tmp_path / "vision.onnx", tmp_path / "vision.plan", num_frames=4, max_batch_size=2,
                      precision=precision)
    tpf, hidden = info["tokens_per_frame"], info["hidden_size"]
    ort = OnnxVisionEncoder(tmp_path / "vision.onnx", tpf, hidden)
    enc = trt_b.TensorRTVisionEncoder(tmp_path / "vision.plan", tpf, hidden)
    assert enc.max_frames == 8
    rng = np.random.default_rng(0)
    for frames in (1, 4, 11):  # 11 > the profile's 8: encoded in two chunks
        x = rng.standard_normal((frames, 3, 112, 112)).astype(np.float32)
        got = enc.encode(x)
        assert got.is_cuda and got.shape == (frames, tpf, hidden)
        torch.testing.assert_close(got.float().cpu(), ort.encode(x), atol=atol, rtol=0)


def _tiny_lm_config(vocab):
    from transformers import LlamaConfig

    # head_dim 64: the size TensorRT-LLM's attention kernels are sure to have
    return LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=False, architectures=["LlamaForCausalLM"])


def _agree_until_close_call(ours: list[int], ref: list[int], margins: list[float], min_margin: float = 0.05) -> int:
    """Steps compared: up to the first one where the reference's top-2 logit gap is within fp16 noise."""
    k = next((i for i, m in enumerate(margins) if m < min_margin), len(margins))
    assert ours[:k] == ref[:k], (ours, ref, margins)
    return k


@pytest.mark.gpu
@needs_trtllm
def test_trtllm_greedy_matches_torch(tmp_path, tiny_tokenizer):
    from transformers import LlamaForCausalLM

    from engine_build.commands import trtllm_build_command
    from engine_build.llm import export_trtllm_checkpoint, run_trtllm_build
    from videoneva.runtime.torch_backend import TorchLanguageModel

    torch.manual_seed(0)
    lm = LlamaForCausalLM(_tiny_lm_config(len(tiny_tokenizer))).eval()
    export_trtllm_checkpoint(lm, tmp_path / "ckpt", "float16")
    cmd = trtllm_build_command(tmp_path / "ckpt", tmp_path / "engine", max_batch_size=1, max_input_len=128,
                               max_output_len=16, max_multimodal_len=32, dtype="float16")
    assert run_trtllm_build(cmd) is not None
    ours = llm_b.TensorRTLLMLanguageModel(tmp_path / "engine", tiny_tokenizer, media_token_id=5,
                                          kv_cache_free_gpu_memory_fraction=0.2)
    ref = TorchLanguageModel(lm.half().cuda(), tiny_tokenizer, media_token_id=5)
    assert ours.hidden_size == 256 and ours.vocab_size >= len(tiny_tokenizer)
    feats = torch.randn(32, 256, generator=torch.Generator().manual_seed(1)) * 0.02
    text = tiny_tokenizer.encode("What color is the shape?", add_special_tokens=False)
    positions = list(range(1, 33))
    base = [text[0]] + [5] * 32 + text[1:]
    s = SamplingSettings(max_tokens=12, greedy=True, repetition_penalty=1.0, end_strings=[])
    got = ours.generate(fake_media_ids(base, positions, ours.vocab_size), feats, s)
    want = ref.generate(fake_media_ids(base, positions, ref.vocab_size), feats, s)
    full = fake_media_ids(base, positions, ref.vocab_size) + want.token_ids[:-1]
    logits = ref.logits(full, feats)[len(base) - 1:].float()  # (steps, vocab)
    top2 = logits.topk(2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    assert _agree_until_close_call(got.token_ids, want.token_ids, margins) >= 1

    streamed = []
    again = ours.generate(fake_media_ids(base, positions, ours.vocab_size), feats, s, on_token=streamed.append)
    assert again.token_ids == got.token_ids and streamed[: len(got.token_ids)] == got.token_ids


@pytest.mark.gpu
@needs_tensorrt
@needs_trtllm
def test_engine_dir_runs_gpu_backends_like_cpu(tmp_path, tiny_tokenizer, media_dir):
    from videoneva.checkpoint.native import CheckpointSettings, save_checkpoint
    from videoneva.cli import main as cli
    from videoneva.config import InferConfig, load_config
    from videoneva.model.factory import TINY, new_llava
    from videoneva.runtime.loader import build_pipeline
    from videoneva.runtime.pipeline import Request
    from videoneva.runtime.trtllm_backend import TensorRTLLMLanguageModel

    sizes = dataclasses.replace(TINY, vocab_size=len(tiny_tokenizer), image_size=112, text_hidden=256,
                                text_intermediate=512)
    llava = new_llava(sizes, image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"),
                      pad_token_id=tiny_tokenizer.pad_token_id, bos_token_id=tiny_tokenizer.bos_token_id,
                      eos_token_id=tiny_tokenizer.eos_token_id, seed=0)
    ckpt = save_checkpoint(llava, tiny_tokenizer, CheckpointSettings(conv_template="nv_steerlm", num_frames=4),
                           tmp_path / "ckpt")
    out = tmp_path / "engine"
    assert cli(["build", f"checkpoint={ckpt}", f"output={out}", "vision.backend=tensorrt",
                "llm.backend=tensorrt_llm", "trainer.precision=16", "max_batch_size=1", "max_input_len=512",
                "max_output_len=16"]) == 0
    common = [f"engine_dir={out}", f"inference.media_base_path={media_dir}", "inference.insert_media_token=right"]
    gpu = build_pipeline(load_config(InferConfig, [*common, "device=cuda"]))
    assert isinstance(gpu.vision, trt_b.TensorRTVisionEncoder) and isinstance(gpu.llm, TensorRTLLMLanguageModel)
    cpu = build_pipeline(load_config(InferConfig, [*common, "device=cpu"]))
    req = Request("What color is the shape?", "video", "clip.mp4")
    torch.testing.assert_close(gpu.features(req)[0].float().cpu(), cpu.features(req)[0], atol=5e-2, rtol=0)
    s = SamplingSettings(max_tokens=8, greedy=True, repetition_penalty=1.0, end_strings=[])
    a, b = gpu.answer(req, s), cpu.answer(req, s)
    assert a.prompt == b.prompt and len(a.token_ids) > 0
    # fp16 engine vs fp32 torch on random weights: the first greedy token is far from a tie
    assert a.token_ids[0] == b.token_ids[0]


def test_serve_refuses_several_llm_instances_of_a_parallel_engine(tmp_path, tiny_tokenizer, capsys):
    from videoneva.cli import main as cli

    d = _gpu_engine_dir(tmp_path, tiny_tokenizer)
    (d / "llm" / "trtllm_engine").mkdir(parents=True)
    (d / "llm" / "trtllm_engine" / "config.json").write_text(
        json.dumps({"pretrained_config": {"mapping": {"tp_size": 2, "pp_size": 1}}}))
    assert cli(["serve", f"engine_dir={d}", "llm_instances=2", "grpc_port=0", "http_port=0", "metrics_port=0"]) == 2
    err = capsys.readouterr().err
    assert "llm_instances=2" in err and "2 ranks" in err and "Traceback" not in err
