"""Triton model `vision_encoder`: frames → features (vision tower + projector).

ONNX Runtime on CPU (numpy only, no torch), the TensorRT plan on GPU. Triton's dynamic batcher
gathers the frames of concurrent requests (max_batch_size frames); every request queued at the
instance's worker is then encoded in as few calls as the frame limit allows.
"""
from __future__ import annotations

import numpy as np

from videoneva.runtime.engine import load_vision
from videoneva.runtime.engine_dir import EngineDir
from videoneva.serving.tensors import Tensors

INPUTS = {"pixel_values": ("TYPE_FP32", [3, -1, -1])}     # batched: [F, 3, H, W] per request
OUTPUTS = {"features": ("TYPE_FP32", [-1, -1])}           # batched: [F, T, D] per request
DECOUPLED = False


class VisionEncoderModel:
    """Encodes every request's frames; `batch` takes the requests queued together.

    Args:
        encoder: a VisionEncoder (frames [F, 3, H, W] → [F, T, D]).
        max_frames: frames per encoder call (0: no limit).
    """

    def __init__(self, encoder, max_frames: int = 0):
        self.encoder, self.max_frames = encoder, max_frames

    def __call__(self, inputs: Tensors, call=None) -> Tensors:
        out = self.batch([inputs])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def _encode(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        sizes = [f.shape[0] for f in frames]
        feats = self.encoder.encode(np.concatenate(frames, axis=0) if len(frames) > 1 else frames[0])
        if not isinstance(feats, np.ndarray):  # the TensorRT encoder answers with a torch tensor
            feats = feats.float().cpu().numpy()
        return np.split(np.asarray(feats, np.float32), np.cumsum(sizes)[:-1], axis=0)

    def batch(self, requests: list[Tensors]) -> list:
        """Outputs (or the exception) per request, encoding at most max_frames frames per call."""
        frames = [np.ascontiguousarray(r["pixel_values"], np.float32) for r in requests]
        results: list = []
        i = 0
        while i < len(frames):
            j, n = i, 0
            while j < len(frames) and (j == i or not self.max_frames or n + frames[j].shape[0] <= self.max_frames):
                n += frames[j].shape[0]
                j += 1
            try:
                results += [{"features": f} for f in self._encode(frames[i:j])]
            except Exception as exc:  # noqa: BLE001  every request of the call gets the error
                results += [exc] * (j - i)
            i = j
        return results


def make(params: dict[str, str], bls=None) -> VisionEncoderModel:
    eng = EngineDir.read(params["engine_dir"])
    backend, _ = eng.backends(params.get("device", "auto"))
    return VisionEncoderModel(load_vision(eng, backend, threads=int(params.get("threads") or 0) or None),
                              int(params.get("max_batch_size") or 0))
