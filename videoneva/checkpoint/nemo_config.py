"""model_config.yaml → the LLM's transformers config, with NeMo's defaults filled in and every key that
changes the math either carried over or refused by name.

Facts from NVIDIA/NeMo (1.21-2.3): megatron_gpt_model.py `build_transformer_config` (mcore: RMSNorm or
LayerNorm, `layernorm1p` and, from 2.0, `layernorm_zero_centered_gamma` scale by 1 + weight),
megatron_base_model.py (defaults, `_vocab_size_with_padding`), neva_model.py `model_provider_func` (the
legacy NeVA model gets neither `rotary_base` nor `num_query_groups`: RoPE base 10000, one KV head per
head), modules/common/megatron/transformer.py (`transformer_block_type` of the legacy model; mcore has no
such option and is always pre-LN).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import LlamaConfig, NemotronConfig, PretrainedConfig

from videoneva.checkpoint.nemo_archive import CONFIG_NAME, cfg_get as _get
from videoneva.errors import CheckpointError

log = logging.getLogger(__name__)

# NeMo's defaults for the keys read here (MegatronGPTModel's cfg.get(key, default)).
DEFAULTS: dict[str, Any] = {
    "mcore_gpt": False, "position_embedding_type": "learned_absolute", "normalization": "layernorm",
    "activation": "gelu", "bias": True, "rotary_percentage": 1.0, "rotary_base": 10000,
    "normalize_attention_scores": True, "num_moe_experts": None, "window_size": None, "rotary_interleaved": False,
    "megatron_legacy": False, "scale_positional_embedding": False, "transformer_block_type": "pre_ln",
    "layernorm_zero_centered_gamma": False, "share_embeddings_and_output_weights": True, "layernorm_epsilon": 1e-5,
    "seq_len_interpolation_factor": None, "qk_layernorm": False, "headscale": False, "qkv_bias": False,
    "multi_latent_attention": False, "make_vocab_size_divisible_by": 128, "tensor_model_parallel_size": 1,
}
# The two LLM families transformers computes exactly: (normalization, activations, transformers model).
FAMILIES = {
    "llama": ("rmsnorm", ("fast-swiglu", "swiglu"), "Llama/Mistral: RMSNorm, SwiGLU, full RoPE"),
    "nemotron": ("layernorm1p", ("squared-relu",), "Nemotron/nvgpt: LayerNorm1P, squared ReLU, partial RoPE"),
}
SIZE_KEYS = ("hidden_size", "num_layers", "num_attention_heads", "num_query_groups", "ffn_hidden_size", "kv_channels",
             "normalization", "activation", "position_embedding_type", "rotary_percentage", "bias",
             "share_embeddings_and_output_weights")


def resolved(cfg: dict) -> dict:
    """The LLM keys NeMo reads, defaults filled in: num_query_groups null = num_attention_heads, kv_channels
    null = hidden_size // num_attention_heads, max_position_embeddings null = encoder_seq_length."""
    out = {k: _get(cfg, k, v) for k, v in DEFAULTS.items()}
    for k in ("hidden_size", "num_layers", "num_attention_heads", "ffn_hidden_size", "encoder_seq_length"):
        out[k] = _get(cfg, k)
    heads, hidden = out["num_attention_heads"], out["hidden_size"]
    out["num_query_groups"] = _get(cfg, "num_query_groups", heads)
    out["kv_channels"] = _get(cfg, "kv_channels", hidden // heads if hidden and heads else None)
    out["max_position_embeddings"] = _get(cfg, "max_position_embeddings", out["encoder_seq_length"] or 4096)
    out["normalization"] = str(out["normalization"]).lower()
    return out


def llm_family(r: dict, path: Path) -> str:
    """'llama' | 'nemotron', or CheckpointError naming each key that changes the math and is not computed."""
    family = next((f for f, (norm, acts, _) in FAMILIES.items()
                   if r["normalization"] == norm and r["activation"] in acts), None)
    problems = []
    if family is None:
        problems.append(f"normalization={r['normalization']!r} with activation={r['activation']!r} (supported: "
                        + "; ".join(f"{n} + {'|'.join(a)}" for n, a, _ in FAMILIES.values()) + ")")
    wanted = {"position_embedding_type": "rope", "bias": False, "normalize_attention_scores": True,
              "num_moe_experts": None, "window_size": None, "rotary_interleaved": False, "megatron_legacy": False,
              "scale_positional_embedding": False, "qk_layernorm": False, "headscale": False, "qkv_bias": False,
              "multi_latent_attention": False}
    problems += [f"{k}={r[k]!r} (supported: {v!r})" for k, v in wanted.items() if r[k] != v]
    if family == "llama" and r["rotary_percentage"] != 1.0:
        problems.append(f"rotary_percentage={r['rotary_percentage']!r} (supported with rmsnorm: 1.0)")
    if not r["mcore_gpt"]:
        if r["transformer_block_type"] != "pre_ln":  # mcore has no such option: always pre-LN
            problems.append(f"transformer_block_type={r['transformer_block_type']!r} with mcore_gpt false "
                            "(supported: 'pre_ln')")
        if r["num_query_groups"] != r["num_attention_heads"]:
            problems.append(f"num_query_groups={r['num_query_groups']} with mcore_gpt false (NeMo's legacy NeVA "
                            "model is built without grouped-query attention)")
    missing = [k for k in ("hidden_size", "num_layers", "num_attention_heads", "ffn_hidden_size") if r[k] is None]
    if missing:
        problems.append(f"missing LLM sizes {missing}")
    if problems:
        raise CheckpointError(f"{path}: unknown architecture: the LLM in {CONFIG_NAME} is not computed exactly by "
                              f"transformers: {'; '.join(problems)}. Supported: "
                              + "; ".join(d for _, _, d in FAMILIES.values()))
    return family


def check_same_llm(neva: dict, base: dict, neva_path: Path, base_path: Path) -> None:
    """The NeVA config and the base GPT config describe one LLM (compared with defaults filled in)."""
    a, b = resolved(neva), resolved(base)
    diff = [f"{k}: {a[k]!r} vs {b[k]!r}" for k in SIZE_KEYS if a[k] != b[k]]
    if diff:
        raise CheckpointError(f"{neva_path} and base_model_file {base_path} describe different LLMs "
                              f"({'; '.join(diff)}): pass the GPT .nemo this NeVA model was trained on")


def padded_vocab_size(cfg: dict, tokens: int) -> int:
    """NeMo's `_vocab_size_with_padding`: up to a multiple of make_vocab_size_divisible_by × TP."""
    r = resolved(cfg)
    multiple = int(r["make_vocab_size_divisible_by"]) * int(r["tensor_model_parallel_size"] or 1)
    return -(-tokens // multiple) * multiple


def rope_theta(r: dict, path: Path) -> float:
    if r["mcore_gpt"]:
        return float(r["rotary_base"])
    if float(r["rotary_base"]) != 10000.0:
        log.warning("%s: rotary_base=%s is ignored: NeMo's legacy NeVA model (mcore_gpt false) runs RoPE at base "
                    "10000, which is what this model was trained with", path, r["rotary_base"])
    return 10000.0


def text_config(r: dict, family: str, vocab: int, tok, path: Path) -> PretrainedConfig:
    """The transformers config of the LLM (LlamaConfig or NemotronConfig)."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": rope_theta(r, path)}
    if r["seq_len_interpolation_factor"]:
        rope.update(rope_type="linear", factor=float(r["seq_len_interpolation_factor"]))
    common = dict(
        vocab_size=vocab, hidden_size=int(r["hidden_size"]), num_hidden_layers=int(r["num_layers"]),
        num_attention_heads=int(r["num_attention_heads"]), num_key_value_heads=int(r["num_query_groups"]),
        head_dim=int(r["kv_channels"]), intermediate_size=int(r["ffn_hidden_size"]),
        max_position_embeddings=int(r["max_position_embeddings"]), tie_word_embeddings=bool(
            r["share_embeddings_and_output_weights"]),
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        attention_bias=False, mlp_bias=False)
    if family == "nemotron":
        rope["partial_rotary_factor"] = float(r["rotary_percentage"])
        return NemotronConfig(hidden_act="relu2", norm_eps=float(r["layernorm_epsilon"]), rope_parameters=rope,
                              **common)
    return LlamaConfig(rms_norm_eps=float(r["layernorm_epsilon"]), rope_parameters=rope, **common)


def zero_centered_gamma(r: dict, family: str) -> bool:
    """Whether RMSNorm weights act as 1 + weight (mcore, `layernorm_zero_centered_gamma: true`).

    NeMo's mcore GPT honours the key from NeMo 2.0 on; the legacy model never reads it. Nemotron's
    layernorm1p adds the 1 in transformers' own LayerNorm1P.
    """
    return family == "llama" and bool(r["mcore_gpt"]) and bool(r["layernorm_zero_centered_gamma"])
