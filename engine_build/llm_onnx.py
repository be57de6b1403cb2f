"""The LLM for ONNX Runtime (llm.backend=onnx): one graph for the prefill and every decode step.

The graph takes each layer's cached keys and values as inputs of their own and returns only the
new positions' keys and values, so the runtime keeps the cache in buffers it writes in place (no
copy of the cache per step: runtime/decode.py's KVBatch). Attention reads the cache and the new
positions side by side (one softmax over both), each group of query heads against its shared
key/value head as stored (no repeated heads). One export serves a prompt of any length (P = 0)
and each further token (S = 1), for one sequence or a batch of rows of different lengths (an
attention mask marks each row's own cache columns; position ids give each row its positions). It
is traced with B = 2, S = 3 and P = 4, so that no branch taken only for one row, one query or an
empty cache is frozen into the trace, and checked, before it is accepted, against the plain
transformers model run on each row alone, at several (B, S, P), ragged rows included. Written in
float32, the dtype a CPU runs fast.
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import AttentionInterface, PreTrainedModel

from engine_build.vision import ExportMismatch
from videoneva.errors import ConfigError
from videoneva.runtime.onnx_backend import LLM_EMBEDDINGS, LLM_ONNX, llm_input_names, llm_output_names

log = logging.getLogger(__name__)

BATCH_AXIS, PAST_AXIS, SEQ_AXIS, TOTAL_AXIS = "batch", "past", "seq", "total"
SPLIT_ATTENTION = "videoneva_split"  # the attention implementation the export runs the LLM with


class _Past:
    """One call's cache inputs, and the new keys/values each layer's attention hands back."""

    def __init__(self, keys, values):
        self.keys, self.values = keys, values
        self.new_keys: dict[int, torch.Tensor] = {}
        self.new_values: dict[int, torch.Tensor] = {}


def split_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Attention over a layer's cache (past) and the new positions, without concatenating them.

    query [B, H, S, d]; key, value [B, kv_heads, S, d] (the new positions); the past's
    [B, kv_heads, P, d] come in kwargs["videoneva_past"]; attention_mask additive [B, 1, S, P + S].
    """
    past: _Past = kwargs["videoneva_past"]
    i = module.layer_idx
    past.new_keys[i], past.new_values[i] = key, value
    pk, pv = past.keys[i], past.values[i]
    heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[3]
    group = heads // kv_heads
    q = query.reshape(query.shape[0], kv_heads, -1, dim)  # query head h reads key/value head h // group
    scores = torch.cat([torch.matmul(q, pk.transpose(-1, -2)), torch.matmul(q, key.transpose(-1, -2))], -1) * scaling
    width = scores.shape[-1]
    scores = scores.view(scores.shape[0], kv_heads, group, -1, width) + attention_mask[:, :, None]
    probs = scores.softmax(-1, dtype=torch.float32).to(q.dtype).view(scores.shape[0], kv_heads, -1, width)
    cached = pk.shape[2]
    out = torch.matmul(probs[..., :cached], pv) + torch.matmul(probs[..., cached:], value)
    return out.view(out.shape[0], heads, -1, dim).transpose(1, 2), None


AttentionInterface.register(SPLIT_ATTENTION, split_attention)


class LlmStepModule(torch.nn.Module):
    """(inputs_embeds [B, S, D], attention_mask int64 [B, P + S], position_ids int64 [B, S], then per
    layer past_key, past_value [B, kv_heads, P, head_dim]) → (logits [B, vocab] of the last position,
    then per layer new_key, new_value [B, kv_heads, S, head_dim]).

    Runs `lm` with the split attention (set while tracing: export_llm_onnx)."""

    def __init__(self, lm: PreTrainedModel):
        super().__init__()
        self.lm = lm
        self.layers = int(lm.config.num_hidden_layers)

    def forward(self, inputs_embeds, attention_mask, position_ids, *cache):
        past = _Past(cache[0::2], cache[1::2])
        cached, seq = cache[0].shape[2], inputs_embeds.shape[1]
        new = torch.arange(seq, device=inputs_embeds.device)
        # cache columns: a row's own (attention_mask); new positions: causal among themselves
        causal = (new[None, :] <= new[:, None])[None]                                     # (1, S, S)
        allowed = torch.cat([(attention_mask[:, :cached] > 0)[:, None, :].expand(-1, seq, -1),
                             causal & (attention_mask[:, cached:] > 0)[:, None, :]], dim=-1)  # (B, S, P + S)
        mask = torch.where(allowed, 0.0, torch.finfo(inputs_embeds.dtype).min)
        out = self.lm(inputs_embeds=inputs_embeds, position_ids=position_ids, attention_mask=mask[:, None],
                      use_cache=False, logits_to_keep=1, videoneva_past=past)
        kv = []
        for i in range(self.layers):
            kv += [past.new_keys[i], past.new_values[i]]
        # logits_to_keep=1: one position; index 0, as a negative index is unsafe in the exported Gather
        return (out.logits[:, 0], *kv)


def _cache_shape(config, rows: int, past: int) -> tuple[int, ...]:
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return (rows, int(getattr(config, "num_key_value_heads", None) or heads), past, head_dim)


def _case(lm: PreTrainedModel, seq: int, past: int, gen: torch.Generator, rows: int = 1, holes: int = 0):
    """Graph inputs for `rows` rows of random tokens, and what the plain model gives for each row alone.

    Row k owns the last past - k·holes cache columns (the others hold noise, masked, as in a ragged
    batch): its cache is the model's own for its tokens. Returns (inputs, per row (logits [vocab],
    per layer (new keys, new values) [kv_heads, S, head_dim]))."""
    emb = lm.get_input_embeddings()
    layers = int(lm.config.num_hidden_layers)
    x = torch.empty(rows, seq, emb.weight.shape[1])
    keys = [torch.randn(_cache_shape(lm.config, rows, past), generator=gen) for _ in range(layers)]
    values = [torch.randn(_cache_shape(lm.config, rows, past), generator=gen) for _ in range(layers)]
    mask = torch.zeros(rows, past + seq, dtype=torch.long)
    positions = torch.empty(rows, seq, dtype=torch.long)
    refs = []
    for k in range(rows):
        own = max(past - k * holes, 0)
        ids = torch.randint(0, lm.config.vocab_size, (1, own + seq), generator=gen)
        full = lm(inputs_embeds=emb(ids), use_cache=True)
        layer_kv = [(layer.keys[0], layer.values[0]) for layer in full.cache.layers]
        for i, (kk, vv) in enumerate(layer_kv):
            keys[i][k, :, past - own:] = kk[:, :own]
            values[i][k, :, past - own:] = vv[:, :own]
        mask[k, past - own:] = 1
        positions[k] = torch.arange(own, own + seq)
        x[k] = emb(ids)[0, own:]
        refs.append((full.logits[0, -1], [(kk[:, own:], vv[:, own:]) for kk, vv in layer_kv]))
    cache = [t for kv in zip(keys, values) for t in kv]
    return (x, mask, positions, *cache), refs


def onnx_vs_torch(lm: PreTrainedModel, path: Path, cases: tuple[tuple[int, int, int, int], ...], seed: int = 0) -> float:
    """Max |onnxruntime − transformers| over logits and new keys/values, for each (S, P, rows, holes) in
    cases; transformers runs each row alone, without a cache or a mask (its own causal attention)."""
    from videoneva.runtime.onnx_backend import onnxruntime_module

    ort = onnxruntime_module()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(torch.get_num_threads(), 1)
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    layers = int(lm.config.num_hidden_layers)
    gen, worst = torch.Generator().manual_seed(seed), 0.0
    for seq, past, rows, holes in cases:
        with torch.inference_mode():
            inputs, refs = _case(lm, seq, past, gen, rows, holes)
        out = sess.run(llm_output_names(layers), dict(zip(llm_input_names(layers), (t.numpy() for t in inputs))))
        for k, (logits, kv) in enumerate(refs):
            got = [out[0][k]] + [out[1 + j][k] for j in range(2 * layers)]
            want = [logits] + [t for pair in kv for t in pair]
            for name, a, b in zip(["logits"] + llm_output_names(layers)[1:], got, want):
                b = b.numpy()
                if a.shape != b.shape:
                    raise ExportMismatch(f"{path}: S={seq}, P={past}, B={rows} gave {name} {a.shape}, expected {b.shape}")
                worst = max(worst, float(np.abs(a - b).max()))
    return worst


def export_llm_onnx(lm: PreTrainedModel, out_dir: str | Path, opset: int = 17,
                    check: tuple[tuple[int, int, int, int], ...] = ((9, 0, 1, 0), (1, 9, 1, 0), (1, 0, 1, 0), (4, 6, 1, 0),
                                                                   (1, 7, 3, 2), (1, 5, 2, 0), (3, 6, 2, 2)),
                    atol: float = 1e-3) -> dict:
    """Write out_dir/llm.onnx (prefill + decode step) and out_dir/embed_tokens.safetensors; check them.

    Args:
        lm: a causal LM (LlamaForCausalLM, MistralForCausalLM) in float32.
        out_dir: folder to write (engine_dir/llm/onnx).
        opset: ONNX opset.
        check: (new positions S, cached positions P, rows B, holes) run through onnxruntime, against
            transformers on each row alone; with holes > 0, row k's first k·holes cache columns are
            not its own (a ragged batch).
        atol: largest max-abs difference accepted (ExportMismatch above it).

    Returns:
        {path, opset, inputs, outputs, max_abs_diff, check, onnx_bytes, export_seconds}
    """
    import onnx
    from safetensors.torch import save_file

    dtypes = {p.dtype for p in lm.parameters()}
    if dtypes != {torch.float32}:
        raise ConfigError(f"llm.backend=onnx exports a float32 LLM (got {sorted(map(str, dtypes))})")
    window = getattr(lm.config, "sliding_window", None)
    if window:
        raise ConfigError(f"llm.backend=onnx builds a plain causal mask; this LLM uses sliding-window attention "
                          f"(sliding_window={window}): build it with llm.backend=torch")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = int(lm.config.num_hidden_layers)
    inputs, outputs = llm_input_names(layers), llm_output_names(layers)
    axes = {inputs[0]: {0: BATCH_AXIS, 1: SEQ_AXIS}, inputs[1]: {0: BATCH_AXIS, 1: TOTAL_AXIS},
            inputs[2]: {0: BATCH_AXIS, 1: SEQ_AXIS}, outputs[0]: {0: BATCH_AXIS},
            **{name: {0: BATCH_AXIS, 2: PAST_AXIS} for name in inputs[3:]},
            **{name: {0: BATCH_AXIS, 2: SEQ_AXIS} for name in outputs[1:]}}
    with torch.inference_mode():
        sample, _ = _case(lm.eval(), 3, 4, torch.Generator().manual_seed(0), rows=2, holes=1)
    was = lm.config._attn_implementation
    lm.set_attn_implementation(SPLIT_ATTENTION)
    try:
        module = LlmStepModule(lm).eval()
        t0 = time.perf_counter()
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter. Its warnings about shapes frozen into the trace are what the
            # (S, P, B) check below guards.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(module, tuple(t.clone() for t in sample), str(out / LLM_ONNX), input_names=inputs,
                              output_names=outputs, dynamic_axes=axes, opset_version=opset, dynamo=False)
        export_s = time.perf_counter() - t0
    finally:
        lm.set_attn_implementation(was)
    onnx.checker.check_model(str(out / LLM_ONNX), full_check=True)
    diff = onnx_vs_torch(lm, out / LLM_ONNX, check)
    if not diff <= atol:
        raise ExportMismatch(f"{out / LLM_ONNX}: onnxruntime differs from transformers by {diff:.3g} (> {atol})")
    save_file({"weight": lm.get_input_embeddings().weight.detach().contiguous()}, str(out / LLM_EMBEDDINGS))
    log.info("llm.onnx: max |ort - transformers| = %.2e over (S, P, B, holes) %s, export %.1f s", diff, list(check),
             export_s)
    return {"path": str(out / LLM_ONNX), "opset": opset, "inputs": inputs, "outputs": outputs,
            "max_abs_diff": diff, "check": [list(c) for c in check], "onnx_bytes": (out / LLM_ONNX).stat().st_size,
            "export_seconds": round(export_s, 2)}
