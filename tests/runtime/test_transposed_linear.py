"""The CPU serving layout of the torch LLM's weights computes what the plain Linear layers compute."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from videoneva.runtime.torch_backend import TransposedLinear, transpose_linears


def test_transposed_weights_give_the_same_logits_and_leave_no_linear_behind():
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, attention_bias=True)).eval()
    ids = torch.randint(0, 96, (3, 7))
    with torch.inference_mode():
        want = lm(input_ids=ids).logits
        linears = sum(type(m) is torch.nn.Linear for m in lm.modules())
        assert transpose_linears(lm) == linears > 0
        got = lm(input_ids=ids).logits
    assert not any(type(m) is torch.nn.Linear for m in lm.modules())
    assert sum(isinstance(m, TransposedLinear) for m in lm.modules()) == linears
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
