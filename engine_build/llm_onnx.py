"""The LLM for ONNX Runtime (llm.backend=onnx): one graph for the prefill and every decode step.

The graph takes the KV cache as inputs and returns the grown cache, so one export serves a
prompt of any length (P = 0) and each further token (S = 1), for one sequence or a batch of rows
of different lengths (an attention mask marks each row's own cache columns; position ids give
each row its positions). It is traced with B = 2, S = 3 and P = 4, so that no branch taken only
for one row, one query or an empty cache is frozen into the trace. The export is checked against
torch at several (B, S, P), ragged rows included, before it is accepted. Written in float32, the
dtype a CPU runs fast.
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from engine_build.vision import ExportMismatch
from videoneva.errors import ConfigError
from videoneva.runtime.onnx_backend import LLM_EMBEDDINGS, LLM_INPUTS, LLM_ONNX, LLM_OUTPUTS

log = logging.getLogger(__name__)

BATCH_AXIS, PAST_AXIS, SEQ_AXIS, TOTAL_AXIS = "batch", "past", "seq", "total"


class LlmStepModule(torch.nn.Module):
    """(inputs_embeds [B, S, D], past_keys, past_values [layers, B, kv_heads, P, head_dim],
    attention_mask int64 [B, P + S], position_ids int64 [B, S]) → (logits [B, vocab] of the last
    position, present_keys, present_values [.., P + S, ..])."""

    def __init__(self, lm: PreTrainedModel):
        super().__init__()
        self.lm = lm
        self.layers = int(lm.config.num_hidden_layers)

    def forward(self, inputs_embeds, past_keys, past_values, attention_mask, position_ids):
        cache = DynamicCache()
        for i in range(self.layers):
            cache.update(past_keys[i], past_values[i], i)
        past, seq = past_keys.shape[3], inputs_embeds.shape[1]
        columns = torch.arange(past + seq, device=inputs_embeds.device)        # (P + S,)
        queries = torch.arange(seq, device=inputs_embeds.device) + past       # (S,) the new columns
        # Causal over cache columns, and only a row's own columns: a 4D additive mask, built here
        # (transformers takes a 4D mask as given), a few ops instead of its mask machinery.
        allowed = (columns[None, None, :] <= queries[None, :, None]) & (attention_mask[:, None, :] > 0)  # (B, S, P + S)
        mask = torch.where(allowed, 0.0, torch.finfo(inputs_embeds.dtype).min)
        out = self.lm(inputs_embeds=inputs_embeds, cache=cache, position_ids=position_ids,
                      attention_mask=mask[:, None], use_cache=True, logits_to_keep=1)
        layers = out.cache.layers
        # logits_to_keep=1: one position; index 0, as a negative index is unsafe in the exported Gather
        return (out.logits[:, 0], torch.stack([x.keys for x in layers]), torch.stack([x.values for x in layers]))


def _cache_shape(config, rows: int, past: int) -> tuple[int, ...]:
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return (int(config.num_hidden_layers), rows, int(getattr(config, "num_key_value_heads", None) or heads), past,
            head_dim)


def _real_inputs(lm: PreTrainedModel, seq: int, past: int, gen: torch.Generator, rows: int = 1, holes: int = 0):
    """Embeddings of random token ids and the cache torch builds for `past` more random ids, per row;
    with holes > 0, row k's first k * holes cache columns are not its own (masked, as in a ragged batch)."""
    emb = lm.get_input_embeddings()
    ids = torch.randint(0, lm.config.vocab_size, (rows, past + seq), generator=gen)
    x = emb(ids)
    mask = torch.ones(rows, past + seq, dtype=torch.long)
    for k in range(rows):
        mask[k, : min(k * holes, past)] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)[:, past:]
    if past == 0:
        empty = torch.zeros(_cache_shape(lm.config, rows, 0))
        return x, empty, empty.clone(), mask, positions
    out = lm(inputs_embeds=x[:, :past], use_cache=True)
    keys = torch.stack([layer.keys for layer in out.cache.layers])
    values = torch.stack([layer.values for layer in out.cache.layers])
    return x[:, past:], keys, values, mask, positions


def onnx_vs_torch(module: LlmStepModule, path: Path, cases: tuple[tuple[int, int, int, int], ...], seed: int = 0) -> float:
    """Max |onnxruntime − torch| over logits and the returned cache, for each (S, P, rows, holes) in cases."""
    from videoneva.runtime.onnx_backend import onnxruntime_module

    ort = onnxruntime_module()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(torch.get_num_threads(), 1)
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    gen, worst = torch.Generator().manual_seed(seed), 0.0
    for seq, past, rows, holes in cases:
        with torch.inference_mode():
            inputs = _real_inputs(module.lm, seq, past, gen, rows, holes)
            ref = [t.numpy() for t in module(*inputs)]
        out = sess.run(list(LLM_OUTPUTS), dict(zip(LLM_INPUTS, (t.numpy() for t in inputs))))
        for name, a, b in zip(LLM_OUTPUTS, out, ref):
            if a.shape != b.shape:
                raise ExportMismatch(f"{path}: S={seq}, P={past}, B={rows} gave {name} {a.shape}, torch gives {b.shape}")
            worst = max(worst, float(np.abs(a - b).max()))
    return worst


def export_llm_onnx(lm: PreTrainedModel, out_dir: str | Path, opset: int = 17,
                    check: tuple[tuple[int, int, int, int], ...] = ((9, 0, 1, 0), (1, 9, 1, 0), (1, 0, 1, 0), (4, 6, 1, 0),
                                                                   (1, 7, 3, 2), (1, 5, 2, 0)),
                    atol: float = 1e-3) -> dict:
    """Write out_dir/llm.onnx (prefill + decode step) and out_dir/embed_tokens.safetensors; check them.

    Args:
        lm: a causal LM (LlamaForCausalLM, MistralForCausalLM) in float32.
        out_dir: folder to write (engine_dir/llm/onnx).
        opset: ONNX opset.
        check: (new positions S, cached positions P, rows B, holes) run through onnxruntime and torch; with
            holes > 0, row k's first k·holes cache columns are masked (a ragged batch).
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
    module = LlmStepModule(lm.eval()).eval()
    with torch.inference_mode():
        sample = _real_inputs(lm, 3, 4, torch.Generator().manual_seed(0), rows=2, holes=1)
    axes = {LLM_INPUTS[0]: {0: BATCH_AXIS, 1: SEQ_AXIS}, LLM_INPUTS[1]: {1: BATCH_AXIS, 3: PAST_AXIS},
            LLM_INPUTS[2]: {1: BATCH_AXIS, 3: PAST_AXIS}, LLM_INPUTS[3]: {0: BATCH_AXIS, 1: TOTAL_AXIS},
            LLM_INPUTS[4]: {0: BATCH_AXIS, 1: SEQ_AXIS}, LLM_OUTPUTS[0]: {0: BATCH_AXIS},
            LLM_OUTPUTS[1]: {1: BATCH_AXIS, 3: TOTAL_AXIS}, LLM_OUTPUTS[2]: {1: BATCH_AXIS, 3: TOTAL_AXIS}}
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter: it traces the cache filled from input tensors as plain concats.
        # Its warnings about shapes frozen into the trace are what the (S, P) check below guards.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, tuple(t.clone() for t in sample), str(out / LLM_ONNX), input_names=list(LLM_INPUTS),
                          output_names=list(LLM_OUTPUTS), dynamic_axes=axes, opset_version=opset, dynamo=False)
    export_s = time.perf_counter() - t0
    onnx.checker.check_model(str(out / LLM_ONNX), full_check=True)
    diff = onnx_vs_torch(module, out / LLM_ONNX, check)
    if not diff <= atol:
        raise ExportMismatch(f"{out / LLM_ONNX}: onnxruntime differs from torch by {diff:.3g} (> {atol})")
    save_file({"weight": lm.get_input_embeddings().weight.detach().contiguous()}, str(out / LLM_EMBEDDINGS))
    log.info("llm.onnx: max |ort - torch| = %.2e over (S, P) %s, export %.1f s", diff, list(check), export_s)
    return {"path": str(out / LLM_ONNX), "opset": opset, "inputs": list(LLM_INPUTS), "outputs": list(LLM_OUTPUTS),
            "max_abs_diff": diff, "check": [list(c) for c in check], "onnx_bytes": (out / LLM_ONNX).stat().st_size,
            "export_seconds": round(export_s, 2)}
