"""Fixtures for the engine-build tests (helpers live in eb_helpers.py)."""
from __future__ import annotations

import pytest
import torch
from eb_helpers import VOCAB, calib_batches, tiny_llama_config
from transformers import LlamaForCausalLM


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here (the machine's cores are shared), restored for the rest of the suite."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def eval_ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def awq_lm():
    """(original fp32 LM, AWQ fake-quantized copy): quantized once per module (about 1 s)."""
    from engine_build.llm import quantize_awq

    torch.manual_seed(0)
    orig = LlamaForCausalLM(tiny_llama_config()).eval()
    lm = LlamaForCausalLM(tiny_llama_config()).eval()
    lm.load_state_dict(orig.state_dict())
    return orig, quantize_awq(lm, calib_batches(), group_size=128)
