"""ONNX Runtime backends: the vision encoder (engine_dir/vision/vision.onnx) and the LLM (engine_dir/llm/onnx/)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from videoneva.errors import CheckpointError, ConfigError
from videoneva.runtime.torch_backend import DecodeLoopLanguageModel


def onnxruntime_module():
    """The `onnxruntime` module, from whichever of the two ONNX Runtime packages is installed.

    onnxruntime (CPU) and onnxruntime-gpu both provide it and overwrite each other, so neither is a
    base dependency: the `cpu` extra installs the first, the `gpu` extra the second.
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(f"ONNX Runtime is not installed ({exc}): pip install 'videoneva[cpu]' (onnxruntime) or "
                          "'videoneva[gpu]' (onnxruntime-gpu), not both") from None
    return onnxruntime


class OnnxVisionEncoder:
    """pixel_values [F, 3, H, W] → features [F, T, D] through onnxruntime (CPU, or CUDA when present)."""

    def __init__(self, path: str | Path, tokens_per_frame: int, hidden_size: int, threads: int | None = None):
        ort = onnxruntime_module()

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"vision encoder not found: {path}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.tokens_per_frame, self.hidden_size = tokens_per_frame, hidden_size

    def encode(self, pixel_values: np.ndarray) -> torch.Tensor:
        x = np.ascontiguousarray(pixel_values, dtype=np.float32)
        (out,) = self.session.run(None, {self.input_name: x})
        if out.shape[1:] != (self.tokens_per_frame, self.hidden_size):
            raise CheckpointError(f"vision.onnx returned {out.shape}, expected [F, {self.tokens_per_frame}, {self.hidden_size}]")
        return torch.from_numpy(out)


# engine_dir/llm/onnx/: one graph for the prefill and every decode step (engine_build/llm_onnx.py)
LLM_ONNX = "llm.onnx"
LLM_EMBEDDINGS = "embed_tokens.safetensors"
LLM_INPUTS = ("inputs_embeds", "past_keys", "past_values")     # [1, S, D], [layers, 1, kv_heads, P, head_dim] ×2
LLM_OUTPUTS = ("logits", "present_keys", "present_values")    # [1, vocab] at the last position, [.., P + S, ..] ×2


class OnnxLanguageModel(DecodeLoopLanguageModel):
    """The decode loop on ONNX Runtime: the KV cache goes in and comes out of one graph as tensors.

    The prefill is that graph with an empty cache (P = 0); each further token runs it with S = 1.
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
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(d / LLM_ONNX), opts, providers=providers)
        names = tuple(i.name for i in self.session.get_inputs())
        if names != LLM_INPUTS:
            raise CheckpointError(f"{d / LLM_ONNX}: inputs {list(names)}, expected {list(LLM_INPUTS)}")
        layers, _, kv_heads, _, head_dim = self.session.get_inputs()[1].shape
        self._empty = np.zeros((layers, 1, kv_heads, 0, head_dim), np.float32)
        weight = load_file(str(d / LLM_EMBEDDINGS))["weight"]
        super().__init__(torch.nn.Embedding.from_pretrained(weight), text_config, tokenizer, media_token_id,
                         fake_id_base)

    def _run(self, embeds: torch.Tensor, keys: np.ndarray, values: np.ndarray):
        x = np.ascontiguousarray(embeds.numpy(), dtype=np.float32)
        logits, keys, values = self.session.run(LLM_OUTPUTS, dict(zip(LLM_INPUTS, (x, keys, values))))
        return torch.from_numpy(logits), (keys, values)

    def _prefill(self, embeds):
        return self._run(embeds, self._empty, self._empty)

    def _step(self, embeds, state):
        return self._run(embeds, *state)
