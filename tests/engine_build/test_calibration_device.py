"""AWQ calibration runs on the GPU in the engine's dtype when there is one, on the CPU in float32 otherwise."""
from __future__ import annotations

import pytest
import torch
from eb_helpers import tiny_llama_config

from engine_build.llm import calibration_device, quantize_awq


def _lm():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


def _batches():
    g = torch.Generator().manual_seed(0)
    return [{"inputs_embeds": torch.randn(1, 20, 256, generator=g) * 0.05,
             "attention_mask": torch.ones(1, 20, dtype=torch.long)} for _ in range(2)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_calibration_stays_on_the_cpu_in_float32():
    lm = calibration_device(_lm(), "float16")
    assert {(p.device.type, p.dtype) for p in lm.parameters()} == {("cpu", torch.float32)}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, torch_dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_calibration_runs_on_the_gpu_in_the_engine_dtype(dtype, torch_dtype):
    lm = calibration_device(_lm(), dtype)
    seen = []
    lm.register_forward_pre_hook(lambda m, args, kw: seen.append((kw["inputs_embeds"].device.type,
                                                                  kw["inputs_embeds"].dtype)), with_kwargs=True)
    q = quantize_awq(lm, _batches(), group_size=128)
    assert seen and set(seen) == {("cuda", torch_dtype)}
    assert [m for n, m in q.named_modules() if n.endswith("q_proj.weight_quantizer") and m.is_enabled]
