"""Read a video's container header with PyAV (codec, size, fps, frame count) without decoding any frame.

PyAV is optional at run time (a dev dependency): `probe_video` returns None without it and the
decoders then learn what they need from decord. With it, the probe gives the codec (needed to
route VP9/MJPEG to DALI's CPU decoder), checks frame size against the pixel limit before any
frame is decoded, and turns a file FFmpeg cannot parse into a MediaError naming the cause.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from videoneva.errors import MediaError

Source = Union[bytes, Path]


@dataclass
class VideoProbe:
    codec: str                 # FFmpeg's canonical codec name: h264, hevc, vp9, mjpeg, av1, mpeg4, …
    width: int
    height: int
    fps: Optional[float]
    num_frames: Optional[int]  # from the header, or counted packets when count_frames=True
    container: str


def _av():
    try:
        import av
    except ImportError:
        return None
    return av


def have_pyav() -> bool:
    return _av() is not None


def probe_video(source: Source, name: str, count_frames: bool = False) -> Optional[VideoProbe]:
    """Header facts of the first video stream, or None when PyAV is not installed.

    Args:
        source: the file's bytes, or a path to it.
        name: how the file is named in error messages.
        count_frames: when the header has no frame count (WebM/MKV), count the video packets
            (demux only, no decoding) — exact for one-frame-per-packet codecs, which DALI's
            frame indexing assumes too.
    """
    av = _av()
    if av is None:
        return None
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else str(source),
                            metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise MediaError(f"{name}: not a readable video container ({_reason(e)})") from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise MediaError(f"{name}: has no video stream (container {container.format.name}, streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        codec = ctx.codec.canonical_name if ctx.codec is not None else (ctx.name or "unknown")
        fps = float(stream.average_rate) if stream.average_rate else None
        frames = int(stream.frames) if stream.frames and stream.frames > 0 else None
        if count_frames and frames is None:
            try:
                frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
            except av.error.FFmpegError as e:
                raise MediaError(f"{name}: container is damaged or truncated ({_reason(e)})") from None
        return VideoProbe(codec=codec, width=int(ctx.width), height=int(ctx.height), fps=fps,
                          num_frames=frames, container=container.format.name)


def _reason(e: Exception) -> str:
    # PyAV messages look like "[Errno 1094995529] Invalid data found when processing input: '<none>'"
    text = (getattr(e, "strerror", None) or str(e)).strip()
    if "Invalid data" in text:
        text += ": damaged, truncated, or not a video"
    return text
