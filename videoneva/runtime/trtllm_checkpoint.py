"""Read a TensorRT-LLM Llama checkpoint (config.json + rank*.safetensors) back as HF-named fp32 tensors.

Our own loader, so the CPU can check (and run) exactly what the GPU engine will be built from:
W4A16_AWQ and FP8 weights are dequantized in torch, fused projections split, tp/pp shards merged.

Layout read (modelopt `export_tensorrt_llm_checkpoint`, TensorRT-LLM docs/source/architecture/checkpoint.md):
  transformer.vocab_embedding.weight [V, D]          → model.embed_tokens.weight
  transformer.layers.L.input_layernorm.weight        → model.layers.L.input_layernorm.weight
  transformer.layers.L.attention.qkv.weight          → self_attn.{q,k,v}_proj (fused q|k|v rows per rank)
  transformer.layers.L.attention.dense.weight        → self_attn.o_proj   (row-parallel: split along in)
  transformer.layers.L.post_layernorm.weight         → post_attention_layernorm
  transformer.layers.L.mlp.fc.weight                 → mlp.gate_proj      (column-parallel)
  transformer.layers.L.mlp.gate.weight               → mlp.up_proj        (column-parallel)
  transformer.layers.L.mlp.proj.weight               → mlp.down_proj      (row-parallel)
  transformer.ln_f.weight, lm_head.weight            → model.norm.weight, lm_head.weight
Layer indices are local to a pipeline stage; rank = pp_rank * tp_size + tp_rank (TensorRT-LLM Mapping).

W4A16_AWQ (modelopt/torch/export/quant_utils.py `pack_int4_in_uint8`, `get_prequant_scaling_factor`):
  <linear>.weight                   int8 [out/2, in]: byte = (w[2j] & 0xF) | (w[2j+1] << 4), w signed in [-8, 7]
  <linear>.weights_scaling_factor   [out, in/group] = per-group amax / 7
  <linear>.prequant_scaling_factor  [in]: the layer computes (x * pqs) @ W_q^T, so the dense equivalent is
                                    W = W_q * pqs[None, :] (pqs folded into the weight COLUMNS).

FP8 (modelopt FP8_DEFAULT_CFG export): <linear>.weight float8_e4m3fn [out, in], weights_scaling_factor
  per tensor ([1]) or per output row ([out]): W = W_fp8 * scale. activation_scaling_factor (the
  engine's static input scale) is dropped: the dense model runs its activations unquantized.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from videoneva.errors import CheckpointError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
SUPPORTED_QUANT_ALGOS = (None, "W4A16_AWQ", "W4A16", "FP8")

# TensorRT-LLM layer-local tensor → (HF layer-local tensor, how tp shards merge).
_LAYER_MAP = {
    "input_layernorm.weight": ("input_layernorm.weight", "replicated"),
    "post_layernorm.weight": ("post_attention_layernorm.weight", "replicated"),
    "attention.qkv.weight": ("self_attn.{}_proj.weight", "qkv"),
    "attention.dense.weight": ("self_attn.o_proj.weight", "row"),
    "mlp.fc.weight": ("mlp.gate_proj.weight", "column"),
    "mlp.gate.weight": ("mlp.up_proj.weight", "column"),
    "mlp.proj.weight": ("mlp.down_proj.weight", "row"),
}
_GLOBAL_MAP = {
    "transformer.vocab_embedding.weight": ("model.embed_tokens.weight", "embedding"),
    "transformer.ln_f.weight": ("model.norm.weight", "replicated"),
    "lm_head.weight": ("lm_head.weight", "column"),
}
_LAYER_RE = re.compile(r"^transformer\.layers\.(\d+)\.(.+)$")


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """int8 [out/2, in] (two signed nibbles per byte along out, low nibble = even row) → int8 [out, in]."""
    b = packed.view(torch.uint8).to(torch.int16)  # (out/2, in), 0..255
    low = b & 0x0F
    high = (b >> 4) & 0x0F
    both = torch.stack([low, high], dim=1)  # (out/2, 2, in): rows 2j, 2j+1
    both = torch.where(both >= 8, both - 16, both)  # sign-extend 4 bits
    return both.reshape(-1, b.shape[1]).to(torch.int8)  # (out, in)


def dequantize_awq(packed: torch.Tensor, scales: torch.Tensor, pre_quant_scale: torch.Tensor | None,
                   group_size: int, name: str = "") -> torch.Tensor:
    """fp32 [out, in] dense weight equivalent to a W4A16(_AWQ) linear.

    Args:
        packed: int8 [out/2, in] packed int4 weight.
        scales: [out, in/group_size] per-group scale (amax / 7).
        pre_quant_scale: [in] AWQ input scale, or None (plain W4A16).
        group_size: input channels per scale.
        name: tensor name for error messages.
    """
    w = unpack_int4(packed).to(torch.float32)  # (out, in)
    out_f, in_f = w.shape
    if in_f % group_size or tuple(scales.shape) != (out_f, in_f // group_size):
        raise CheckpointError(f"{name}: weights_scaling_factor has shape {tuple(scales.shape)}, expected "
                              f"[{out_f}, {in_f} / group_size {group_size}] for weight [{out_f}, {in_f}]")
    w = w * scales.to(torch.float32).repeat_interleave(group_size, dim=1)  # (out, in)
    if pre_quant_scale is not None:
        if pre_quant_scale.numel() != in_f:
            raise CheckpointError(f"{name}: prequant_scaling_factor has {pre_quant_scale.numel()} values, "
                                  f"expected one per input channel ({in_f})")
        w = w * pre_quant_scale.to(torch.float32).reshape(1, in_f)
    return w


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor, name: str = "") -> torch.Tensor:
    """fp32 [out, in] dense weight of an FP8 linear: float8_e4m3fn weight × per-tensor or per-row scale.

    Args:
        weight: float8_e4m3fn [out, in].
        scale: [1] or [out] weights_scaling_factor.
        name: tensor name for error messages.
    """
    out_f = weight.shape[0]
    s = scale.to(torch.float32).reshape(-1)
    if s.numel() not in (1, out_f):
        raise CheckpointError(f"{name}: weights_scaling_factor has {s.numel()} values; expected 1 or one per output "
                              f"row ({out_f})")
    return weight.to(torch.float32) * (s if s.numel() == 1 else s[:, None])


def _read_config(d: Path) -> dict:
    if not (d / "config.json").is_file():
        raise CheckpointError(f"{d}: not a TensorRT-LLM checkpoint (no config.json); export one with "
                              "`videoneva build` (llm/trtllm_ckpt)")
    cfg = json.loads((d / "config.json").read_text())
    arch = cfg.get("architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(f"{d}/config.json: architecture {arch!r} is not supported; expected one of "
                              f"{list(SUPPORTED_ARCHITECTURES)}")
    q = cfg.get("quantization") or {}
    if q.get("quant_algo") not in SUPPORTED_QUANT_ALGOS:
        raise CheckpointError(f"{d}/config.json: quantization.quant_algo {q.get('quant_algo')!r} is not supported; "
                              f"expected one of {list(SUPPORTED_QUANT_ALGOS)}")
    if q.get("has_zero_point"):
        raise CheckpointError(f"{d}/config.json: quantization.has_zero_point=true (asymmetric int4) is not supported")
    return cfg


def _rank_tensors(path: Path, group_size: int) -> dict[str, torch.Tensor]:
    """One rank file → {trtllm name (linears without suffix): fp32 dense tensor}."""
    from safetensors.torch import load_file

    raw = load_file(str(path))
    out: dict[str, torch.Tensor] = {}
    linears = {k[: -len(".weights_scaling_factor")] for k in raw if k.endswith(".weights_scaling_factor")}
    for base in sorted(linears):
        if base + ".weight" not in raw:
            raise CheckpointError(f"{path}: {base}.weights_scaling_factor without {base}.weight")
        weight, scale = raw.pop(base + ".weight"), raw.pop(base + ".weights_scaling_factor")
        if weight.dtype == torch.float8_e4m3fn:
            raw.pop(base + ".activation_scaling_factor", None)
            out[base + ".weight"] = dequantize_fp8(weight, scale, f"{path.name}:{base}")
            continue
        out[base + ".weight"] = dequantize_awq(weight, scale, raw.pop(base + ".prequant_scaling_factor", None),
                                               group_size, f"{path.name}:{base}")
    stray = [k for k in raw if k.endswith(".prequant_scaling_factor")]
    if stray:
        raise CheckpointError(f"{path}: prequant_scaling_factor without a quantized weight: {stray[:4]}")
    for k, v in raw.items():
        if not v.is_floating_point():
            raise CheckpointError(f"{path}: {k} is {v.dtype} but no weights_scaling_factor says how to dequantize it")
        out[k] = v.to(torch.float32)
    return out


def _merge_qkv(shards: list[torch.Tensor], n_heads: int, n_kv: int, head: int, tp: int, name: str) -> tuple:
    """tp shards of fused [q_r | k_r | v_r] rows → full q, k, v weights."""
    if n_heads % tp or n_kv % tp:
        raise CheckpointError(f"{name}: num_attention_heads={n_heads}, num_key_value_heads={n_kv} with tp_size={tp}: "
                              "only head counts divisible by tp_size can be merged")
    q_r, kv_r = n_heads // tp * head, n_kv // tp * head
    qs, ks, vs = [], [], []
    for s in shards:
        if s.shape[0] != q_r + 2 * kv_r:
            raise CheckpointError(f"{name}: fused qkv shard has {s.shape[0]} rows, expected {q_r} + 2 x {kv_r}")
        q, k, v = torch.split(s, [q_r, kv_r, kv_r], dim=0)
        qs.append(q), ks.append(k), vs.append(v)
    return torch.cat(qs), torch.cat(ks), torch.cat(vs)


def _merge_stage(ranks: list[dict[str, torch.Tensor]], cfg: dict) -> tuple[dict[str, torch.Tensor], int]:
    """tp shards of one pipeline stage → (HF-named tensors with stage-local layer indices, layers in the stage)."""
    tp = len(ranks)
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_heads
    head = cfg.get("head_size") or cfg["hidden_size"] // n_heads
    keys = set(ranks[0])
    for i, r in enumerate(ranks[1:], 1):
        if set(r) != keys:
            raise CheckpointError(f"tp rank {i} holds different tensors than tp rank 0: {sorted(set(r) ^ keys)[:6]}")
    out: dict[str, torch.Tensor] = {}
    n_layers = 0
    for k in sorted(keys):
        shards = [r[k] for r in ranks]
        m = _LAYER_RE.match(k)
        if m:
            n_layers = max(n_layers, int(m.group(1)) + 1)
            prefix, entry = f"model.layers.{m.group(1)}.", _LAYER_MAP.get(m.group(2))
        else:
            prefix, entry = "", _GLOBAL_MAP.get(k)
        if entry is None:
            raise CheckpointError(f"unexpected tensor {k} in a Llama TensorRT-LLM checkpoint")
        hf, kind = entry
        if kind == "embedding":  # vocab-parallel (dim 0) or hidden-parallel (dim 1) when use_parallel_embedding
            kind = "replicated" if not cfg.get("use_parallel_embedding") else \
                ("column" if cfg.get("embedding_sharding_dim", 0) == 0 else "row")
        if kind == "qkv":
            q, k_, v = _merge_qkv(shards, n_heads, n_kv, head, tp, k)
            for part, t in zip("qkv", (q, k_, v)):
                out[prefix + hf.format(part)] = t
        elif tp == 1 or kind == "replicated":
            out[prefix + hf] = shards[0]
        else:
            out[prefix + hf] = torch.cat(shards, dim=0 if kind == "column" else 1)
    return out, n_layers


def _to_hf(stages: list[tuple[dict[str, torch.Tensor], int]], cfg: dict) -> dict[str, torch.Tensor]:
    """Pipeline stages (layer indices local to each) → one HF Llama state dict."""
    sd: dict[str, torch.Tensor] = {}
    offset = 0
    for tensors, n_layers in stages:
        for k, v in tensors.items():
            m = re.match(r"^model\.layers\.(\d+)\.(.+)$", k)
            name = f"model.layers.{int(m.group(1)) + offset}.{m.group(2)}" if m else k
            if name in sd:
                raise CheckpointError(f"{k} appears in more than one pipeline stage")
            sd[name] = v
        offset += n_layers
    if offset != cfg["num_hidden_layers"]:
        raise CheckpointError(f"checkpoint holds {offset} layers across its pipeline stages, config.json says "
                              f"num_hidden_layers={cfg['num_hidden_layers']}")
    if "lm_head.weight" not in sd:
        if not cfg.get("share_embedding_table", False) and not cfg.get("tie_word_embeddings", False):
            raise CheckpointError("lm_head.weight is missing and config.json does not share the embedding table")
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    for need in ("model.embed_tokens.weight", "model.norm.weight"):
        if need not in sd:
            raise CheckpointError(f"checkpoint has no tensor for {need}")
    return sd


def load_trtllm_checkpoint(ckpt_dir: str | Path, vocab_size: int | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, HF Llama state dict in fp32) of a TensorRT-LLM checkpoint, W4A16_AWQ / FP8 dequantized.

    The embedding and lm_head keep TensorRT-LLM's padded vocabulary (a multiple of 64 when quantized)
    unless vocab_size is given, in which case the padding rows are cut off.

    Args:
        ckpt_dir: directory with config.json and rank{r}.safetensors for r < tp_size * pp_size.
        vocab_size: the model's real vocabulary size, to drop padding rows.
    """
    d = Path(ckpt_dir)
    cfg = _read_config(d)
    mapping = cfg.get("mapping") or {}
    tp, pp = int(mapping.get("tp_size", 1)), int(mapping.get("pp_size", 1))
    files = [d / f"rank{r}.safetensors" for r in range(tp * pp)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{d}: mapping tp_size={tp}, pp_size={pp} needs {tp * pp} rank files; missing {missing}")
    group = int((cfg.get("quantization") or {}).get("group_size") or 128)
    stages = []
    for p in range(pp):
        ranks = [_rank_tensors(files[p * tp + t], group) for t in range(tp)]  # rank = pp_rank * tp + tp_rank
        stages.append(_merge_stage(ranks, cfg))
    sd = _to_hf(stages, cfg)
    if vocab_size is not None:
        for k in ("model.embed_tokens.weight", "lm_head.weight"):
            if sd[k].shape[0] < vocab_size:
                raise CheckpointError(f"{k} has {sd[k].shape[0]} rows, fewer than vocab_size={vocab_size}")
            sd[k] = sd[k][:vocab_size]
    return cfg, sd
