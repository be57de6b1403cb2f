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
# [B, S, D], int64 [B, P + S] (1: a row's own column), int64 [B, S]; then per layer past_key.i, past_value.i
LLM_INPUTS = ("inputs_embeds", "attention_mask", "position_ids")
# [B, vocab] at the last position; then per layer new_key.i, new_value.i [B, kv_heads, S, head_dim]
LLM_OUTPUTS = ("logits",)


def llm_input_names(layers: int) -> list[str]:
    """The graph's inputs: LLM_INPUTS, then each layer's cache [B, kv_heads, P, head_dim]."""
    return [*LLM_INPUTS, *(f"past_{kind}.{i}" for i in range(layers) for kind in ("key", "value"))]


def llm_output_names(layers: int) -> list[str]:
    """The graph's outputs: the logits, then each layer's keys and values of the new positions."""
    return [*LLM_OUTPUTS, *(f"new_{kind}.{i}" for i in range(layers) for kind in ("key", "value"))]


class OnnxLanguageModel(DecodeLoopLanguageModel):
    """The decode loop on ONNX Runtime: each layer's cache goes into one graph, the new positions' keys
    and values come out, and the KVBatch stores them in its buffers.

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
        names = [i.name for i in self.session.get_inputs()]
        layers = int(text_config.num_hidden_layers)
        if names != llm_input_names(layers):
            raise CheckpointError(f"{d / LLM_ONNX}: inputs {names[:5]}… ({len(names)}), expected "
                                  f"{llm_input_names(layers)[:5]}… ({3 + 2 * layers}); rebuild the engine directory "
                                  "with this videoneva (`videoneva build … llm.backend=onnx`)")
        self._inputs, self._outputs = names, llm_output_names(layers)
        _, kv_heads, _, head_dim = self.session.get_inputs()[3].shape
        self._empty = [np.zeros((1, kv_heads, 0, head_dim), np.float32)] * (2 * layers)
        weight = load_file(str(d / LLM_EMBEDDINGS))["weight"]
        super().__init__(torch.nn.Embedding.from_pretrained(weight), text_config, tokenizer, media_token_id,
                         fake_id_base)

    def _run(self, embeds: torch.Tensor, mask: np.ndarray, positions: np.ndarray, cache: list[np.ndarray]):
        x = np.ascontiguousarray(embeds.numpy(), dtype=np.float32)
        out = self.session.run(self._outputs, dict(zip(self._inputs, (x, mask, positions, *cache))))
        return torch.from_numpy(out[0]), [torch.from_numpy(t) for t in out[1::2]], [torch.from_numpy(t) for t in out[2::2]]

    def _prefill(self, embeds):
        n = embeds.shape[1]
        logits, keys, values = self._run(embeds, np.ones((1, n), np.int64), np.arange(n)[None], self._empty)
        return logits, KVBatch.single(keys, values)

    def _step(self, embeds, batch: KVBatch):
        n = embeds.shape[1]
        keys, values = batch.past()  # whole buffers (contiguous: no copy into the session); spare columns masked
        cache = [t.numpy() for kv in zip(keys, values) for t in kv]
        logits, new_keys, new_values = self._run(embeds, batch.step_mask(n=n).numpy().astype(np.int64),
                                                 batch.new_positions(n).numpy(), cache)
        batch.write(new_keys, new_values)
        return logits
