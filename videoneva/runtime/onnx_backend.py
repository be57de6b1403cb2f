"""The ONNX Runtime LLM (engine_dir/llm/onnx/); the vision encoder is in onnx_vision.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from videoneva.errors import CheckpointError
from videoneva.runtime.decode import KVBatch
from videoneva.runtime.onnx_vision import onnxruntime_module  # noqa: F401  (re-exported)
from videoneva.runtime.torch_backend import DecodeLoopLanguageModel


# engine_dir/llm/onnx/: one graph for the prefill and every decode step (engine_build/llm_onnx.py)
LLM_ONNX = "llm.onnx"
LLM_EMBEDDINGS = "embed_tokens.safetensors"
# [B, S, D], [layers, B, kv_heads, P, head_dim] ×2, int64 [B, P + S] (1: a row's own column), int64 [B, S]
LLM_INPUTS = ("inputs_embeds", "past_keys", "past_values", "attention_mask", "position_ids")
LLM_OUTPUTS = ("logits", "present_keys", "present_values")    # [B, vocab] at the last position, [.., P + S, ..] ×2


class OnnxLanguageModel(DecodeLoopLanguageModel):
    """The decode loop on ONNX Runtime: the KV cache goes in and comes out of one graph as tensors.

    The prefill is that graph with an empty cache (P = 0); each further token runs it with S = 1,
    for one row or for every row of an in-flight batch (rows of different lengths: the attention
    mask marks each row's own columns, position_ids its positions).
    The token embedding (the prompt table's rows are spliced in beside it) is a torch lookup in the
    table stored next to the graph, so ids, prompt table, sampling and stop rules are exactly
    those of the torch backend.

    Args:
        onnx_dir: engine_dir/llm/onnx (llm.onnx + embed_tokens.safetensors).
        text_config: the LLM's transformers config (engine_dir/llm/torch/config.json).
        tokenizer: the engine's tokenizer.
        media_token_id: an in-vocabulary id standing in for media rows.
        threads: ONNX Runtime intra-op threads (None: its default, one per core).
        fake_id_base: first media id (the engine directory's, media.json); None: the vocabulary size.
    """

    def __init__(self, onnx_dir: str | Path, text_config, tokenizer, media_token_id: int, threads: int | None = None,
                 fake_id_base: int | None = None):
        ort = onnxruntime_module()
        from safetensors.torch import load_file

        d = Path(onnx_dir)
        missing = [n for n in (LLM_ONNX, LLM_EMBEDDINGS) if not (d / n).is_file()]
        if missing:
            raise CheckpointError(f"{d}: missing {', '.join(missing)}; rebuild with `videoneva build … llm.backend=onnx`")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # idle intra-op threads sleep instead of spinning: in a server the cores they would burn are
        # needed by the other models (a spinning pool cost a small vision encoder 8x its work)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(d / LLM_ONNX), opts, providers=providers)
        names = tuple(i.name for i in self.session.get_inputs())
        if names != LLM_INPUTS:
            raise CheckpointError(f"{d / LLM_ONNX}: inputs {list(names)}, expected {list(LLM_INPUTS)}; rebuild the "
                                  "engine directory with this videoneva (`videoneva build … llm.backend=onnx`)")
        layers, _, kv_heads, _, head_dim = self.session.get_inputs()[1].shape
        self._empty = np.zeros((layers, 1, kv_heads, 0, head_dim), np.float32)
        weight = load_file(str(d / LLM_EMBEDDINGS))["weight"]
        super().__init__(torch.nn.Embedding.from_pretrained(weight), text_config, tokenizer, media_token_id,
                         fake_id_base)

    def _run(self, embeds: torch.Tensor, keys: np.ndarray, values: np.ndarray, mask: np.ndarray, positions: np.ndarray):
        x = np.ascontiguousarray(embeds.numpy(), dtype=np.float32)
        logits, keys, values = self.session.run(LLM_OUTPUTS, dict(zip(LLM_INPUTS, (x, keys, values, mask, positions))))
        return torch.from_numpy(logits), [torch.from_numpy(keys), torch.from_numpy(values)]

    def _prefill(self, embeds):
        n = embeds.shape[1]
        logits, kv = self._run(embeds, self._empty, self._empty, np.ones((1, n), np.int64), np.arange(n)[None])
        return logits, KVBatch.single(kv, 1, 3)

    def _step(self, embeds, batch: KVBatch):
        logits, kv = self._run(embeds, batch.tensors[0].numpy(), batch.tensors[1].numpy(),
                               batch.step_mask().numpy().astype(np.int64), batch.positions[:, None].numpy())
        batch.appended(kv)
        return logits
