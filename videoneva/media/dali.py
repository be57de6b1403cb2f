"""NVIDIA DALI video decoding of in-memory files with per-request frame indices (GPU NVDEC or DALI's CPU decoder).

Written against `nvidia.dali.fn.decoders.video` (DALI 2.x): input = the encoded file as a 1-D
uint8 tensor, `frames=` a per-sample list of indices (any order, repeats allowed); output per
sample = uint8 [F, H, W, 3] RGB. device="mixed" decodes on the GPU (NVDEC: H.264, HEVC, VP8,
VP9, AV1, MPEG-4, MJPEG); device="cpu" only reads VP8, VP9 and MJPEG. Checked on DALI 2.4: an
index past the end is NOT an error — DALI returns a black frame — so callers must pass exact
indices (decoders.py counts the frames first).

One pipeline (batch size 1) is built per process and device, fed through external_source and
reused; a lock serialises requests on it. It is rebuilt after a failed run.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
from functools import lru_cache
from typing import Optional

import numpy as np

from videoneva.errors import MediaError

log = logging.getLogger(__name__)

CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
GPU_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg"})


def dali_installed() -> bool:
    """True when nvidia-dali can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):  # the `nvidia` namespace package may be absent
        return False


@lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """CUDA devices DALI can see (0 without DALI, a driver, or a GPU)."""
    if not dali_installed():
        return 0
    from nvidia.dali import backend

    try:
        return int(backend.GetCUDADeviceCount())
    except RuntimeError:  # no driver
        return 0


class DaliDecodeError(MediaError):
    """DALI itself failed on a file (decoders.py may then try decord when decoder=auto)."""


class DaliVideoDecoder:
    """Decode chosen frames of an encoded video held in memory.

    Args:
        device: "cpu" (VP8/VP9/MJPEG only) or "gpu" (NVDEC through DALI's "mixed" backend).
        device_id: CUDA device for "gpu".
    """

    def __init__(self, device: str = "cpu", device_id: int = 0):
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        self.device, self.device_id = device, device_id
        self._pipe = None
        self._lock = threading.Lock()

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=1, num_threads=1, prefetch_queue_depth=1, exec_dynamic=True,
                      device_id=self.device_id if self.device == "gpu" else None)
        def video_pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            return fn.decoders.video(encoded, frames=frames, device="mixed" if self.device == "gpu" else "cpu")

        pipe = video_pipeline()
        pipe.build()
        return pipe

    def decode(self, data: bytes, indices: list[int], name: str = "<bytes>") -> np.ndarray:
        """uint8 [len(indices), H, W, 3] RGB; MediaError if DALI cannot read the file.

        Args:
            data: the encoded file.
            indices: frame indices (0 <= i < the video's frame count), in output order.
            name: how the file is named in error messages.
        """
        encoded = np.frombuffer(data, dtype=np.uint8)
        wanted = np.asarray(indices, dtype=np.int32)
        with self._lock:
            try:
                if self._pipe is None:
                    self._pipe = self._build()
                self._pipe.feed_input("encoded", [encoded])
                self._pipe.feed_input("frames", [wanted])
                (out,) = self._pipe.run()
            except RuntimeError as e:
                self._pipe = None  # DALI marks a pipeline invalid after an operator error
                raise DaliDecodeError(f"{name}: DALI ({self.device}) could not decode the video: {_reason(e)}") from None
        if self.device == "gpu":
            out = out.as_cpu()  # [1, F, H, W, 3] back to host: preprocessing runs on the CPU
        frames = np.array(out[0])
        if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
            raise DaliDecodeError(f"{name}: DALI returned frames of shape {frames.shape}, expected [{len(indices)}, H, W, 3]")
        return frames


def _reason(e: Exception) -> str:
    # DALI errors are long multi-line reports; keep the lines that say what failed.
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    keep = [ln for ln in lines if ln.startswith(("Assert", "Error", "Failed", "[/")) or "not supported" in ln]
    return " ".join(keep[:3] or lines[-1:])[:400]


_DECODERS: dict[tuple[int, str, int], DaliVideoDecoder] = {}
_DECODERS_LOCK = threading.Lock()


def get_decoder(device: str, device_id: int = 0) -> DaliVideoDecoder:
    """The process's decoder for a device (keyed by pid: a forked worker builds its own pipeline)."""
    key = (os.getpid(), device, device_id)
    with _DECODERS_LOCK:
        dec = _DECODERS.get(key)
        if dec is None:
            dec = _DECODERS[key] = DaliVideoDecoder(device, device_id)
        return dec


def default_device_id() -> Optional[int]:
    """The current CUDA device as DALI sees it, or None without CUDA."""
    if cuda_device_count() < 1:
        return None
    from nvidia.dali import backend

    return int(backend.GetCUDACurrentDevice())
