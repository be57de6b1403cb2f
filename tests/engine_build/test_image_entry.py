"""The GPU image's entry: build keys and serve keys kept apart, the build run once, then serve exec'd."""
from __future__ import annotations

import json

import pytest

from engine_build.image_entry import build_defaults, main, split_keys
from videoneva.errors import ConfigError


def test_keys_go_to_the_command_they_name():
    assert split_keys(["build.max_batch_size=4", "serve.grpc_port=9001", "build.data.num_frames=4"]) == (
        ["max_batch_size=4", "data.num_frames=4"], ["grpc_port=9001"])
    with pytest.raises(ConfigError, match="'max_batch_size=4': prefix each key with build. or serve."):
        split_keys(["max_batch_size=4"])
    assert build_defaults({}) == ["vision.backend=tensorrt", "llm.backend=tensorrt_llm", "trainer.precision=bf16"]
    assert build_defaults({"QUANTIZE": "fp8", "PRECISION": "16"})[-2:] == ["quantization.enable=true",
                                                                         "quantization.algorithm=fp8"]


def test_builds_once_with_build_keys_then_execs_serve_with_serve_keys(tiny_checkpoint, tmp_path, capsys):
    engine = tmp_path / "engines" / "tiny"
    calls = []
    args = [str(tiny_checkpoint), str(engine), "build.max_batch_size=2", "build.trainer.precision=32",
            "serve.grpc_port=9001", "serve.videoneva_instances=2"]
    assert main(args, exec_fn=lambda f, a: calls.append(a), env={}) == 0
    m = json.loads((engine / "manifest.json").read_text())
    s = m["settings"]
    assert s["max_batch_size"] == 2 and s["trainer"]["precision"] == "32"  # the user's key wins over the image's
    assert s["vision"]["backend"] == "tensorrt" and s["llm"]["backend"] == "tensorrt_llm"
    assert calls == [["videoneva", "serve", f"engine_dir={engine}", "host=0.0.0.0", "grpc_port=9001",
                      "videoneva_instances=2"]]
    stamp = (engine / "manifest.json").stat().st_mtime_ns
    assert main(args, exec_fn=lambda f, a: calls.append(a), env={}) == 0  # built already: serve only
    assert (engine / "manifest.json").stat().st_mtime_ns == stamp and len(calls) == 2
    assert main([str(tiny_checkpoint), str(tmp_path / "x"), "grpc_port=1"], exec_fn=calls.append, env={}) == 2
    assert "prefix each key" in capsys.readouterr().err and not (tmp_path / "x").exists()
