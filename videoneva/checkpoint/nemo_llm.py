"""Megatron GPT weights (mcore names, see nemo_keys.py) → transformers Llama / Nemotron weights.

Layouts from NVIDIA/NeMo scripts/checkpoint_converters/convert_llama_hf_to_nemo.py and
convert_nemotron_nemo_to_hf.py: qkv interleaved per query group ([q × heads_per_group, k, v] rows of
head_dim each), SwiGLU fc1 fused as [gate; up] (or the legacy gate / up pair), a non-gated fc1 for
squared ReLU, LayerNorm weight and bias fused into linear_qkv / linear_fc1 under Transformer Engine.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import PretrainedConfig

from videoneva.checkpoint import nemo_keys as K
from videoneva.checkpoint.nemo_archive import CONFIG_NAME
from videoneva.errors import CheckpointError

NORMS = ("input_layernorm", "post_attention_layernorm")


def take(weights: dict, key: str, shape: tuple, path) -> torch.Tensor:
    """weights[key], checked against shape (CheckpointError naming the NeMo key otherwise)."""
    if key not in weights:
        raise CheckpointError(f"{path}: missing tensor {key!r}")
    t = weights[key]
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{path}: {key} has shape {tuple(t.shape)}, expected {tuple(shape)} "
                              f"(from {CONFIG_NAME})")
    return t


def pad_vocab(weights: dict, rows: int) -> None:
    """Zero rows appended to the embedding and output layer up to `rows`, as NeMo's NeVA pads a base model's
    embedding for the tokens its tokenizer adds (neva_model.py `pad_word_embeddings`)."""
    for key in (K.EMBED_KEY, K.OUTPUT_KEY):
        if key in weights and weights[key].shape[0] < rows:
            t = weights[key]
            weights[key] = torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def _fc1(w: dict, src: str, tc: PretrainedConfig, family: str, where) -> list[tuple[str, torch.Tensor, str]]:
    ffn, hidden = tc.intermediate_size, tc.hidden_size
    if family == "nemotron":  # squared ReLU: one up projection
        return [("mlp.up_proj.weight", take(w, src + K.FC1_KEY, (ffn, hidden), where), src + K.FC1_KEY)]
    if src + "mlp.linear_fc1_gate.weight" in w:  # legacy unfused SwiGLU: gate and up apart
        keys = (src + "mlp.linear_fc1_gate.weight", src + "mlp.linear_fc1_up.weight")
        halves = tuple(take(w, k, (ffn, hidden), where) for k in keys)
    else:  # fused [gate; up]
        keys = (src + K.FC1_KEY,) * 2
        halves = take(w, keys[0], (2 * ffn, hidden), where).chunk(2, dim=0)
    return [(name, t, key) for name, t, key in zip(K.HF_FC1, halves, keys)]


def llm_state_dict(w: dict, tc: PretrainedConfig, family: str, zero_centered: bool, sd: dict, origin: dict,
                   where) -> None:
    """Fill sd (transformers names) from w (normalised NeMo names); origin maps each new key to its NeMo key.

    zero_centered: the RMSNorm weights act as 1 + weight (mcore layernorm_zero_centered_gamma); the 1 is
    folded into the imported weights.
    """
    heads, groups, dim = tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim
    hidden, per = tc.hidden_size, heads // groups
    for i in range(tc.num_hidden_layers):
        src, dst = f"decoder.layers.{i}.", f"{K.HF_LAYER_PREFIX}{i}."
        qkv_key = src + K.QKV_KEY
        qkv = take(w, qkv_key, ((heads + 2 * groups) * dim, hidden), where).reshape(groups, per + 2, dim, hidden)
        parts = (qkv[:, :per].reshape(heads * dim, hidden), qkv[:, per].reshape(groups * dim, hidden),
                 qkv[:, per + 1].reshape(groups * dim, hidden))
        for name, t in zip(K.HF_QKV, parts):
            sd[dst + name], origin[dst + name] = t.contiguous(), qkv_key
        for name, t, key in _fc1(w, src, tc, family, where):
            sd[dst + name], origin[dst + name] = t.contiguous(), key
        for mcore, hf in K.LAYER_RENAMES.items():
            if src + mcore in w:
                sd[dst + hf], origin[dst + hf] = w[src + mcore], src + mcore
    for mcore, hf in K.GLOBAL_RENAMES.items():
        if mcore in w:
            sd[hf], origin[hf] = w[mcore], mcore
    if zero_centered:
        for key in [k for k in sd if k.endswith(("layernorm.weight", "language_model.norm.weight"))]:
            sd[key] = sd[key].float() + 1  # in float32: 1 + w would lose w's low bits in bf16
    if tc.tie_word_embeddings:
        if K.OUTPUT_KEY in w:
            raise CheckpointError(f"{where}: share_embeddings_and_output_weights is true but the checkpoint has "
                                  f"a separate {K.OUTPUT_KEY}")
        sd["lm_head.weight"] = sd["model.language_model.embed_tokens.weight"]


def embedding_rows(w: dict, cfg: dict, tokens: int, path: Path, base) -> int:
    """Rows of the LLM's vocabulary: the embedding's, padded (NeMo's way) when the tokenizer is larger."""
    from videoneva.checkpoint.nemo_config import padded_vocab_size

    if K.EMBED_KEY not in w:
        raise CheckpointError(
            f"{path}: no LLM weights ({K.EMBED_KEY}): this NeVA checkpoint was trained with the LLM frozen and "
            f"holds only the projector. Pass base_model_file=PATH, the NeMo GPT .nemo it was trained on "
            f"(mm_cfg.llm.from_pretrained: {cfg.get('mm_cfg', {}).get('llm', {}).get('from_pretrained')!r})")
    rows = int(w[K.EMBED_KEY].shape[0])
    if tokens <= rows:
        return rows
    if base is None:
        raise CheckpointError(f"{path}: the tokenizer has {tokens} tokens but {K.EMBED_KEY} only {rows} rows")
    return padded_vocab_size(cfg, tokens)
