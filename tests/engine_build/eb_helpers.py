"""Helpers for the engine-build tests: a tiny Llama-shaped LM that AWQ can quantize (hidden sizes multiple of 128)."""
from __future__ import annotations

import importlib.util

import torch
from transformers import LlamaConfig

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None
VOCAB = 500  # not a multiple of 64: TensorRT-LLM pads it when quantized


def tiny_llama_config(**kw) -> LlamaConfig:
    base = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=500000.0,
                tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    base.update(kw)
    return LlamaConfig(**base)


def calib_batches(n: int = 4, seq: int = 32, hidden: int = 256, seed: int = 1) -> list[dict]:
    """inputs_embeds with a few outlier channels, as real activations have: AWQ then picks non-trivial scales."""
    g = torch.Generator().manual_seed(seed)
    gain = torch.ones(hidden)
    gain[torch.randperm(hidden, generator=g)[:8]] = 20.0
    return [{"inputs_embeds": torch.randn(1, seq, hidden, generator=g) * 0.05 * gain,
             "attention_mask": torch.ones(1, seq, dtype=torch.long)} for _ in range(n)]


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()
