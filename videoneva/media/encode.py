"""Write uint8 RGB frames to a real encoded video file with PyAV (tests, demo data, benchmarks)."""
from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

# codec name -> (PyAV encoder, pixel format, container options)
CODECS: dict[str, tuple[str, str, dict[str, str]]] = {
    "h264": ("libx264", "yuv420p", {"preset": "ultrafast", "crf": "23"}),
    "hevc": ("libx265", "yuv420p", {"preset": "ultrafast", "x265-params": "log-level=error"}),
    "vp9": ("libvpx-vp9", "yuv420p", {"b": "500k", "deadline": "realtime", "cpu-used": "8"}),
    "mjpeg": ("mjpeg", "yuvj420p", {}),
    "mpeg4": ("mpeg4", "yuv420p", {}),
}


def encode_video(frames: Union[np.ndarray, Iterable[np.ndarray]], path: str | Path, codec: str = "h264",
                 fps: int = 8, options: Optional[dict[str, str]] = None,
                 container_options: Optional[dict[str, str]] = None) -> Path:
    """Encode frames into `path` (container from the suffix: .mp4, .webm, .avi, .mkv).

    Args:
        frames: uint8 array [N, H, W, 3], RGB, or an iterable of uint8 [H, W, 3] frames (long
            videos without holding them all in memory). H and W should be even for yuv420p codecs.
        path: output file; its suffix picks the container.
        codec: one of CODECS.
        fps: frame rate written in the stream.
        options: encoder options added to / overriding the codec's defaults (e.g. {"g": "30"}
            for a key frame every 30 frames).
        container_options: muxer options (e.g. {"movflags": "faststart"} for MP4).
    """
    import av  # lazy: only needed to write videos. NB: videoneva.media imports av before decord,
    # because decord's bundled FFmpeg loaded first breaks PyAV's libvpx encoder.

    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("frames is empty: a video needs at least one frame")
    first = np.asarray(first)
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[-1] != 3:
        raise ValueError(f"each frame must be uint8 [H, W, 3], got {first.dtype} {first.shape}")
    encoder, pix_fmt, defaults = CODECS[codec]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options=dict(container_options or {})) as container:
        stream = container.add_stream(encoder, rate=Fraction(fps, 1), options={**defaults, **(options or {})})
        stream.width, stream.height = first.shape[1], first.shape[0]
        stream.pix_fmt = pix_fmt
        for frame in itertools.chain([first], it):
            frame = np.asarray(frame)
            if frame.shape != first.shape or frame.dtype != np.uint8:
                raise ValueError(f"all frames must be uint8 {first.shape}, got {frame.dtype} {frame.shape}")
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def gradient_frames(n: int, height: int = 64, width: int = 96, seed: int = 0) -> np.ndarray:
    """Frames whose content changes with the frame index (so frame selection is observable).

    Frame i has a bright vertical bar at column (i * width) // n and a per-frame base colour.
    Returns uint8 [n, height, width, 3].
    """
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 1, 1, 3), dtype=np.uint8)
    frames = np.broadcast_to(base, (n, height, width, 3)).copy()
    bar = max(2, width // 16)
    for i in range(n):
        x = (i * width) // max(n, 1)
        frames[i, :, x : x + bar] = 255
    return frames
