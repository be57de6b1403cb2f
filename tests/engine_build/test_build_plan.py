"""Build planning: sizes derived from the model's context, every check before any export, the fake-id base
recorded and used everywhere, FP8 for real and the other algorithms refused, what the manifest records."""
from __future__ import annotations

import json

import pytest

from engine_build.plan import DEFAULT_OUTPUT_LEN, sequence_lengths
from videoneva.cli import main as cli
from videoneva.errors import ConfigError


def test_sequence_lengths_derived_from_the_context():
    assert sequence_lengths(None, None, 4096, 8 * 256) == (4096 - DEFAULT_OUTPUT_LEN, DEFAULT_OUTPUT_LEN)
    assert sequence_lengths(None, None, 1024, 2 * 64) == (768, 256)  # the shipped demo model
    assert sequence_lengths(3000, None, 4096, 2048) == (3000, 256)
    assert sequence_lengths(None, 1000, 4096, 2048) == (3096, 1000)
    assert sequence_lengths(None, None, 2100, 2048) == (2080, 20)  # output capped so a video and text fit
    with pytest.raises(ConfigError, match=r"context \(2070 positions\) leaves no room to generate"):
        sequence_lengths(None, None, 2070, 2048)
    with pytest.raises(ConfigError, match="4096 \\+ 256 = 4352 exceeds the model's context \\(4096\\)"):
        sequence_lengths(4096, 256, 4096, 2048)
    with pytest.raises(ConfigError, match="leaves no room for text"):
        sequence_lengths(None, 3000, 4096, 2048)


def _ctx(copy_checkpoint, context: int):
    ckpt = copy_checkpoint()
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["text_config"]["max_position_embeddings"] = context
    (ckpt / "config.json").write_text(json.dumps(cfg))
    return ckpt


def test_default_build_fits_a_short_context_and_records_it(copy_checkpoint, tmp_path):
    ckpt = _ctx(copy_checkpoint, 1024)  # 4 frames x 64 tokens of video
    out = tmp_path / "e"
    assert cli(["build", f"checkpoint={ckpt}", f"output={out}", "max_batch_size=1"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["derived"]["max_input_len"] == 768 and m["derived"]["max_output_len"] == 256
    cmd = " ".join(map(str, m["skipped"]["trtllm_engine"]["command"]))
    assert "--max_input_len 768 --max_seq_len 1024" in cmd
    # what the manifest records about the build machine
    assert m["gpu"] is None and m["versions"]["torch"] and "tensorrt_llm" in m["versions"] and "image" in m
    media = json.loads((out / "media.json").read_text())
    assert media["fake_id_base"] == json.loads((out / "llm/trtllm_ckpt/config.json").read_text())["vocab_size"]


@pytest.fixture()
def no_export(monkeypatch):
    """Fails the test if the vision export starts: the checks must all come first."""
    from engine_build import vision

    def never(*a, **k):
        raise AssertionError("the vision export ran before the settings were checked")

    monkeypatch.setattr(vision, "export_vision_onnx", never)


def _calib(tmp_path, video="clip.mp4"):
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps([{"id": str(i), "video": video, "conversations": [
        {"from": "human", "value": "<video>\nWhat color is the shape?"}, {"from": "gpt", "value": "red"}]}
        for i in range(2)]))
    return calib


@pytest.mark.parametrize("extra, words", [
    (["quantization.enable=true"], "quantization.calib_data"),
    (["quantization.enable=true", "quantization.calib_data=/nonexistent/c.json"], "/nonexistent/c.json is not a file"),
    (["quantization.enable=true", "quantization.calib_data={calib_missing}"], "record 0: gone.mp4: file not found"),
    (["quantization.enable=true", "quantization.algorithm=int8_sq", "quantization.calib_data={calib}"],
     "choose one of ['awq', 'fp8']"),
    (["tensor_model_parallel_size=3"], "is not divisible by tensor_model_parallel_size=3"),
    (["max_output_len=9000"], "leaves no room"),
])
def test_every_check_runs_before_any_export(tiny_checkpoint, media_dir, tmp_path, capsys, no_export, extra, words):
    (tmp_path / "m").mkdir()
    args = [a.format(calib=_calib(tmp_path), calib_missing=_calib(tmp_path / "m", "gone.mp4")) for a in extra]
    out = tmp_path / "never"
    assert cli(["build", f"checkpoint={tiny_checkpoint}", f"output={out}", "quantization.group_size=64",
                f"quantization.calib_media_root={media_dir}", *args]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_awq_records_the_padded_vocabulary_as_the_fake_id_base_everywhere(tiny_checkpoint, media_dir, tmp_path):
    """modelopt pads a 400-ish vocabulary to a multiple of 64 for AWQ: media ids start there on every path."""
    from videoneva.config import InferConfig, load_config
    from videoneva.runtime.engine import engine_front, pipeline_from_engine_dir
    from videoneva.runtime.engine_dir import EngineDir

    out = tmp_path / "awq"
    assert cli(["build", f"checkpoint={tiny_checkpoint}", f"output={out}", "quantization.enable=true",
                "quantization.group_size=64", f"quantization.calib_data={_calib(tmp_path)}",
                f"quantization.calib_media_root={media_dir}", "max_batch_size=1"]) == 0
    vocab = json.loads((out / "llm/torch/config.json").read_text())["vocab_size"]
    padded = json.loads((out / "llm/trtllm_ckpt/config.json").read_text())["vocab_size"]
    assert vocab % 64 and padded % 64 == 0 and padded > vocab
    assert json.loads((out / "media.json").read_text())["fake_id_base"] == padded
    cfg = load_config(InferConfig, [f"engine_dir={out}", f"inference.media_base_path={media_dir}", "device=cpu"])
    front = engine_front(EngineDir.read(out), cfg, None)  # what the Triton entry model numbers media with
    pipe = pipeline_from_engine_dir(out, cfg)
    assert front.vocab_size == pipe.llm.vocab_size == padded
    ids = front.tokenize("What color? <video>", 8)
    assert ids == pipe.front.tokenize("What color? <video>", 8)
    assert sorted(i for i in ids if i >= vocab) == list(range(padded, padded + 8))


def test_fp8_build_is_real(tiny_checkpoint, media_dir, tmp_path, prompt_file):
    out = tmp_path / "fp8"
    assert cli(["build", f"checkpoint={tiny_checkpoint}", f"output={out}", "quantization.enable=true",
                "quantization.algorithm=fp8", f"quantization.calib_data={_calib(tmp_path)}",
                f"quantization.calib_media_root={media_dir}", "max_batch_size=1"]) == 0
    assert json.loads((out / "llm/trtllm_ckpt/config.json").read_text())["quantization"]["quant_algo"] == "FP8"
    m = json.loads((out / "manifest.json").read_text())
    assert m["llm"] == {"quantized": True, "algorithm": "fp8"}
    assert "--gemm_plugin auto" in " ".join(map(str, m["skipped"]["trtllm_engine"]["command"]))
    prompts = prompt_file([{"video": "clip.mp4", "text": "What color?", "question_id": 0}])
    assert cli(["infer", f"engine_dir={out}", f"prompt_file={prompts}", f"output_file={tmp_path / 'a.jsonl'}",
                f"inference.media_base_path={media_dir}", "inference.greedy=true", "inference.tokens_to_generate=4",
                "inference.insert_media_token=right", "print_answers=false"]) == 0


def test_device_cuda_without_cuda_is_refused_for_a_torch_llm(tiny_checkpoint, media_dir, tmp_path, prompt_file,
                                                              capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the GPU check runs the torch LLM there")
    out = tmp_path / "e"
    assert cli(["build", f"checkpoint={tiny_checkpoint}", f"output={out}", "max_batch_size=1"]) == 0
    prompts = prompt_file([{"video": "clip.mp4", "text": "What color?", "question_id": 0}])
    capsys.readouterr()
    assert cli(["infer", f"engine_dir={out}", f"prompt_file={prompts}", f"output_file={tmp_path / 'a.jsonl'}",
                f"inference.media_base_path={media_dir}", "device=cuda"]) == 2
    assert "device=cuda but CUDA is not available" in capsys.readouterr().err


@pytest.mark.gpu
def test_device_cuda_runs_the_torch_llm_on_cuda(tiny_checkpoint, media_dir, tmp_path):
    from videoneva.config import InferConfig, load_config
    from videoneva.runtime.engine import pipeline_from_engine_dir

    out = tmp_path / "e"
    assert cli(["build", f"checkpoint={tiny_checkpoint}", f"output={out}", "max_batch_size=1"]) == 0
    for device in ("cuda", "auto"):
        cfg = load_config(InferConfig, [f"engine_dir={out}", f"inference.media_base_path={media_dir}",
                                        f"device={device}"])
        assert pipeline_from_engine_dir(out, cfg).llm.device.type == "cuda"
