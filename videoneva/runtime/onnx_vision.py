"""The ONNX Runtime vision encoder (engine_dir/vision/vision.onnx); numpy in and out, no torch."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from videoneva.errors import CheckpointError, ConfigError


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
    """pixel_values [F, 3, H, W] → features float32 [F, T, D] (numpy) through onnxruntime (CPU, or CUDA when present)."""

    def __init__(self, path: str | Path, tokens_per_frame: int, hidden_size: int, threads: int | None = None):
        ort = onnxruntime_module()

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"vision encoder not found: {path}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # idle intra-op threads sleep instead of spinning: in a server the cores they would burn are
        # needed by the other models (a spinning pool cost a small vision encoder 8x its work)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.tokens_per_frame, self.hidden_size = tokens_per_frame, hidden_size

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(pixel_values, dtype=np.float32)
        (out,) = self.session.run(None, {self.input_name: x})
        if out.shape[1:] != (self.tokens_per_frame, self.hidden_size):
            raise CheckpointError(f"vision.onnx returned {out.shape}, expected [F, {self.tokens_per_frame}, {self.hidden_size}]")
        return out
