"""`videoneva build` end to end: engine directory layout, manifest, bad settings fail fast, infer engine_dir=."""
from __future__ import annotations

import json
import shutil

import pytest

from videoneva.cli import main as cli


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("engines") / "tiny"
    assert cli(["build", f"checkpoint={tiny_checkpoint}", f"output={out}", "max_batch_size=2",
                "max_input_len=1024", "max_output_len=64"]) == 0
    return out


def test_engine_directory_describes_itself(engine_dir, tiny_checkpoint):
    for rel in ("manifest.json", "media.json", "vision/vision.onnx", "llm/torch/config.json",
                "llm/trtllm_ckpt/config.json", "llm/trtllm_ckpt/rank0.safetensors", "tokenizer/tokenizer.json"):
        assert (engine_dir / rel).exists(), rel
    m = json.loads((engine_dir / "manifest.json").read_text())
    assert m["format_version"] == 1 and len(m["source"]["sha256"]) == 64
    assert m["built"]["vision_onnx"]["max_abs_diff"] < 1e-4
    assert m["derived"]["max_multimodal_len"] == 2 * 4 * 64
    assert "trtexec" in " ".join(map(str, m["skipped"]["vision_plan"]["command"]))
    assert "trtllm-build" in " ".join(map(str, m["skipped"]["trtllm_engine"]["command"]))
    assert not list(engine_dir.parent.glob(".tiny.building.*")), "no temporary directory left behind"


def _infer_both(engine, tiny_checkpoint, media_dir, prompt_file, tmp_path):
    """Greedy answers of `infer engine_dir=engine` and `infer neva_model_file=…` on one video and
    one image, and the shared arguments."""
    prompts = prompt_file([{"video": "clip.mp4", "text": "What color?", "question_id": 0},
                           {"image": "still.png", "text": "How many?", "question_id": 1}])
    common = [f"prompt_file={prompts}", f"inference.media_base_path={media_dir}", "inference.greedy=true",
              "inference.tokens_to_generate=8", "inference.insert_media_token=right", "print_answers=false"]
    assert cli(["infer", f"engine_dir={engine}", f"output_file={tmp_path / 'e.jsonl'}", *common]) == 0
    assert cli(["infer", f"neva_model_file={tiny_checkpoint}", f"output_file={tmp_path / 'c.jsonl'}", *common]) == 0
    e = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()]
    c = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    return [r["raw_response"] for r in e], [r["raw_response"] for r in c], common


def test_infer_from_engine_dir_matches_checkpoint(engine_dir, tiny_checkpoint, media_dir, prompt_file, tmp_path):
    e, c, _ = _infer_both(engine_dir, tiny_checkpoint, media_dir, prompt_file, tmp_path)
    assert len(e) == 2 and e == c


def test_onnx_llm_engine_answers_like_the_checkpoint(tiny_checkpoint, media_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert cli(["build", f"checkpoint={tiny_checkpoint}", f"output={out}", "max_batch_size=2", "max_input_len=1024",
                "max_output_len=64", "llm.backend=onnx"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["built"]["llm_onnx"]["max_abs_diff"] < 1e-4 and (out / "llm/onnx/llm.onnx").is_file()
    assert m["skipped"]["trtllm_engine"]["reason"] == "llm.backend=onnx"
    e, c, common = _infer_both(out, tiny_checkpoint, media_dir, prompt_file, tmp_path)
    assert len(e) == 2 and e == c
    # the build asked for the ONNX LLM: without it the directory is refused by name
    shutil.rmtree(out / "llm" / "onnx")
    capsys.readouterr()
    assert cli(["infer", f"engine_dir={out}", f"output_file={tmp_path / 'x.jsonl'}", *common]) == 2
    assert "missing llm/onnx" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["max_input_len=100"], "leaves no room"),
    (["data.image_token_len=256"], "conflicts"),
    (["max_input_len=8000", "max_output_len=500"], "exceeds the model's context"),
    (["quantization.enable=true", "quantization.group_size=48"], "group"),
    (["vision.backend=openvino"], "vision.backend"),
    (["llm.backend=vllm"], "llm.backend='vllm'"),
    (["llm.backend=onnx", "quantization.enable=true"], "unquantized float32 LLM"),
])
def test_bad_settings_fail_before_long_work(tiny_checkpoint, tmp_path, capsys, args, words):
    out = tmp_path / "never"
    assert cli(["build", f"checkpoint={tiny_checkpoint}", f"output={out}", *args]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_existing_output_is_not_overwritten(engine_dir, tiny_checkpoint, capsys):
    assert cli(["build", f"checkpoint={tiny_checkpoint}", f"output={engine_dir}"]) == 2
    assert "overwrite=true" in capsys.readouterr().err


def test_missing_checkpoint_files(tmp_path, capsys):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "config.json").write_text("{}")
    assert cli(["build", f"checkpoint={tmp_path / 'ck'}", f"output={tmp_path / 'o'}"]) == 2
    assert "missing" in capsys.readouterr().err


def test_awq_build_calibrates_on_real_samples_and_runs_dequantized(tiny_checkpoint, media_dir, prompt_file, tmp_path):
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps([{"id": str(i), "video": "clip.mp4" if i % 2 else "clip.webm", "conversations": [
        {"from": "human", "value": "<video>\nWhat color is the shape?"}, {"from": "gpt", "value": "red"}]}
        for i in range(4)]))
    out = tmp_path / "awq"
    assert cli(["build", f"checkpoint={tiny_checkpoint}", f"output={out}", "quantization.enable=true",
                "quantization.group_size=64", f"quantization.calib_data={calib}", f"quantization.calib_media_root={media_dir}",
                "max_input_len=1024", "max_output_len=64"]) == 0
    cfg = json.loads((out / "llm" / "trtllm_ckpt" / "config.json").read_text())
    assert cfg["quantization"]["quant_algo"] == "W4A16_AWQ" and cfg["quantization"]["group_size"] == 64
    m = json.loads((out / "manifest.json").read_text())
    assert m["llm"]["quantized"] is True
    prompts = prompt_file([{"video": "clip.mp4", "text": "What color?", "question_id": 0}])
    assert cli(["infer", f"engine_dir={out}", f"prompt_file={prompts}", f"output_file={tmp_path / 'a.jsonl'}",
                f"inference.media_base_path={media_dir}", "inference.greedy=true", "inference.tokens_to_generate=4",
                "inference.insert_media_token=right", "print_answers=false"]) == 0


def test_recorded_commands_name_the_final_directory(tmp_path, tiny_checkpoint):
    """The trtexec / trtllm-build commands a CPU build records are run later, on the final directory."""
    import json

    from engine_build.build import main as build_main

    out = tmp_path / "engine"
    assert build_main([f"checkpoint={tiny_checkpoint}", f"output={out}", "max_input_len=512", "max_output_len=128"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    text = json.dumps(manifest)
    assert ".building." not in text
    assert str(out / "vision" / "vision.onnx") in " ".join(map(str, manifest["skipped"]["vision_plan"]["command"]))
    assert str(out / "llm" / "trtllm_ckpt") in " ".join(map(str, manifest["skipped"]["trtllm_engine"]["command"]))
