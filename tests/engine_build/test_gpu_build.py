"""GPU-only: TensorRT vision plan and trtllm-build engine from the artifacts the CPU steps write (skipped here)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from eb_helpers import HAS_TENSORRT, HAS_TRTLLM, VOCAB, calib_batches, tiny_llama_config

needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason="needs the tensorrt Python package (its wheels come from "
                                                            "NVIDIA's index, unreachable on the CPU build machines)")
needs_trtllm = pytest.mark.skipif(not HAS_TRTLLM, reason="needs tensorrt_llm (not installable on the CPU build machines)")


def run_plan(plan_path, x: torch.Tensor) -> torch.Tensor:
    """Run a vision plan on CUDA: pixel_values [F, 3, H, W] fp32 → features (fp32)."""
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan_path.read_bytes())
    ctx = engine.create_execution_context()
    x = x.cuda().contiguous()
    ctx.set_input_shape("pixel_values", tuple(x.shape))
    out = torch.empty(tuple(ctx.get_tensor_shape("features")), dtype=torch.float32, device="cuda")
    ctx.set_tensor_address("pixel_values", x.data_ptr())
    ctx.set_tensor_address("features", out.data_ptr())
    assert ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    return out.cpu()


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("precision,atol", [("32", 1e-3), ("16", 5e-2)])
def test_vision_plan_matches_torch(tmp_path, precision, atol):
    from engine_build.vision import VisionEncoderModule, build_vision_plan, export_vision_onnx
    from videoneva.model.factory import TINY, new_llava

    llava = new_llava(replace(TINY, image_size=112), image_token_id=3)
    export_vision_onnx(llava, tmp_path / "vision.onnx", 112)
    info = build_vision_plan(tmp_path / "vision.onnx", tmp_path / "vision.plan", num_frames=4, max_batch_size=2,
                             precision=precision)
    assert info["profile_frames"] == [1, 4, 8]
    for frames in (1, 4, 8):
        x = torch.randn(frames, 3, 112, 112)
        with torch.no_grad():
            ref = VisionEncoderModule(llava).eval()(x)
        assert (run_plan(tmp_path / "vision.plan", x) - ref).abs().max() < atol


@pytest.mark.gpu
@needs_trtllm
def test_trtllm_build_awq_engine(tmp_path):
    from transformers import LlamaForCausalLM

    from engine_build.commands import max_multimodal_len, trtllm_build_command
    from engine_build.llm import export_trtllm_checkpoint, quantize_awq, run_trtllm_build

    torch.manual_seed(0)
    lm = quantize_awq(LlamaForCausalLM(tiny_llama_config()).eval(), calib_batches(), group_size=128)
    export_trtllm_checkpoint(lm, tmp_path / "ckpt", "float16")
    cmd = trtllm_build_command(tmp_path / "ckpt", tmp_path / "engine", max_batch_size=2, max_input_len=256,
                               max_output_len=16, max_multimodal_len=max_multimodal_len(2, 2, 16), dtype="float16")
    info = run_trtllm_build(cmd)
    assert info is not None, "trtllm-build is installed but was not run"
    assert (tmp_path / "engine" / "rank0.engine").is_file() and (tmp_path / "engine" / "config.json").is_file()

    from tensorrt_llm.runtime import ModelRunner

    runner = ModelRunner.from_dir(str(tmp_path / "engine"))
    ids = torch.randint(0, VOCAB, (12,), dtype=torch.int32)
    out = runner.generate([ids], max_new_tokens=4, end_id=VOCAB - 1, pad_id=0, top_k=1)
    assert out.shape[-1] >= 12 + 1
