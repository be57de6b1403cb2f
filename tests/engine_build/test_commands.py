"""Exact trtexec / trtllm-build command lines and the multimodal table size."""
from __future__ import annotations

import pytest

from engine_build.commands import max_multimodal_len, trtexec_command, trtllm_build_command
from videoneva.errors import ConfigError


def test_max_multimodal_len():
    assert max_multimodal_len(1, 12, 256) == 3072  # TensorRT-LLM's video-neva README: 1 × 12 frames × 256
    assert max_multimodal_len(8, 8, 256) == 16384
    assert max_multimodal_len(8, 8, 64) == 4096  # frame_token_pool=2
    with pytest.raises(ConfigError, match="num_frames=0"):
        max_multimodal_len(8, 0, 256)


def test_trtexec_command_fp16():
    cmd = trtexec_command("e/vision/vision.onnx", "e/vision/vision.plan", num_frames=8, max_batch_size=4,
                          image_size=224, precision="16")
    assert " ".join(cmd) == (
        "trtexec --onnx=e/vision/vision.onnx --saveEngine=e/vision/vision.plan "
        "--minShapes=pixel_values:1x3x224x224 --optShapes=pixel_values:8x3x224x224 "
        "--maxShapes=pixel_values:32x3x224x224 --fp16")


@pytest.mark.parametrize("precision,flag", [("bf16", ["--bf16"]), ("bfloat16", ["--bf16"]), ("32", []),
                                            ("float16", ["--fp16"])])
def test_trtexec_precision_flags(precision, flag):
    cmd = trtexec_command("v.onnx", "v.plan", 4, 1, 336, precision)
    assert cmd[-len(flag):] == flag if flag else cmd[-1].startswith("--maxShapes=pixel_values:4x3x336x336")


def test_trtexec_bad_precision():
    with pytest.raises(ConfigError, match="precision='int8'"):
        trtexec_command("v.onnx", "v.plan", 4, 1, 224, "int8")


def test_trtllm_build_command():
    cmd = trtllm_build_command("e/llm/trtllm_ckpt", "e/llm/trtllm_engine", max_batch_size=8, max_input_len=4096,
                               max_output_len=256, max_multimodal_len=16384, dtype="float16")
    assert " ".join(cmd) == (
        "trtllm-build --checkpoint_dir e/llm/trtllm_ckpt --output_dir e/llm/trtllm_engine "
        "--max_batch_size 8 --max_input_len 4096 --max_seq_len 4352 "
        "--gemm_plugin float16 --gpt_attention_plugin float16 --kv_cache_type paged "
        "--remove_input_padding enable --use_paged_context_fmha enable --max_multimodal_len 16384")


def test_trtllm_build_options():
    cmd = trtllm_build_command("c", "e", 2, 1024, 64, 0, "bfloat16", max_num_tokens=8192, workers=2)
    assert "--max_multimodal_len" not in cmd  # 0: a text-only engine
    assert cmd[cmd.index("--gemm_plugin") + 1] == "bfloat16"
    assert cmd[-4:] == ["--max_num_tokens", "8192", "--workers", "2"]
    with pytest.raises(ConfigError, match="dtype='fp16'"):
        trtllm_build_command("c", "e", 2, 1024, 64, 0, "fp16")
    with pytest.raises(ConfigError, match="max_input_len=0"):
        trtllm_build_command("c", "e", 2, 0, 64, 0, "float16")
