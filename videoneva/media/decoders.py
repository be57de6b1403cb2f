"""Video/image decoders behind one interface: (uint8 [F, H, W, 3] RGB frames, VideoMeta), only the sampled frames decoded.

Registry: "decord" (CPU, every codec its bundled FFmpeg reads) and "dali" (dali.py). With
decoder="auto" the choice per file is:
  1. DALI on the GPU (NVDEC) when nvidia-dali is installed and CUDA is available;
  2. DALI's CPU decoder for VP8/VP9/MJPEG when nvidia-dali is installed (no CUDA);
  3. otherwise decord.
The reason is logged at INFO once per distinct reason. If DALI fails on a file in auto mode,
decord is tried (logged at WARNING); decoder="dali" never falls back.
"""
from __future__ import annotations

import io
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from videoneva.errors import ConfigError, MediaError
from videoneva.media import dali as dali_mod
from videoneva.media.frames import select_frame_indices
from videoneva.media.probe import VideoProbe, probe_video
from videoneva.media.settings import MediaSettings

log = logging.getLogger(__name__)

Source = Union[bytes, Path]
# decord's multi-threaded FFmpeg decoding fails on some VP8/VP9/AV1 files with
# "avcodec_send_packet ... (-11 vs. 0) Thread worker: Error sending packet" (EAGAIN not retried;
# dmlc/decord#246). Reproduced here with libvpx-vp9 files; one decoding thread reads them.
SINGLE_THREAD_CODECS = frozenset({"vp8", "vp9", "av1"})
_EAGAIN = "Error sending packet"


@dataclass
class VideoMeta:
    """What was decoded: the source video's facts and the frames taken from it."""

    num_total_frames: int
    fps: Optional[float]
    height: int
    width: int
    indices: list[int]          # frame index of each output frame (repeats = NeMo padding)
    decoder: str                # "decord" | "dali-cpu" | "dali-gpu" | "pil" (images)
    codec: Optional[str]        # FFmpeg codec name (None when PyAV is absent), image format for images


# -- shared checks ---------------------------------------------------------------------------
def source_name(source: Source, name: Optional[str]) -> str:
    return name if name is not None else (str(source) if isinstance(source, Path) else "<bytes>")


def check_source_size(source: Source, max_bytes: int, name: str) -> None:
    """Zero-byte and over-limit files are refused before any parser sees them."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = len(source)
    else:
        try:
            size = source.stat().st_size
        except FileNotFoundError:
            raise MediaError(f"{name}: file not found") from None
    if size == 0:
        raise MediaError(f"{name}: file is empty (0 bytes)")
    if size > max_bytes:
        raise MediaError(f"{name}: file is {size} bytes, over the limit max_bytes={max_bytes}")


def check_pixels(name: str, height: int, width: int, num_frames: int, settings: MediaSettings) -> None:
    """Refuse frames larger than max_frame_pixels and decodes larger than max_decoded_pixels."""
    if height * width > settings.max_frame_pixels:
        raise MediaError(f"{name}: frame is {width}x{height} = {width * height} pixels, over the limit "
                         f"max_frame_pixels={settings.max_frame_pixels}")
    total = num_frames * height * width
    if total > settings.max_decoded_pixels:
        raise MediaError(f"{name}: decoding {num_frames} frames of {width}x{height} = {total} pixels is over the limit "
                         f"max_decoded_pixels={settings.max_decoded_pixels}; sample fewer frames (num_frames)")


def _as_bytes(source: Source) -> bytes:
    return source.read_bytes() if isinstance(source, Path) else bytes(source)


def _plan(name: str, total: int, settings: MediaSettings) -> list[int]:
    if total < 1:
        raise MediaError(f"{name}: video has no frames")
    return select_frame_indices(total, settings.num_frames, settings.splice_single_frame)


# -- decord ----------------------------------------------------------------------------------
def _decord_reason(e: Exception) -> str:
    # "[02:36:26] /github/workspace/src/video/ffmpeg/x.cc:292: [..] x.cc:218: Check failed: …" → the tail
    text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", text)
    return text.strip()[:300]


def _decord_open(source: Source, threads: int):
    import decord

    return decord.VideoReader(str(source) if isinstance(source, Path) else io.BytesIO(source), num_threads=threads)


def _decord_batch(vr, indices: list[int]) -> np.ndarray:
    batch = vr.get_batch(indices)
    # decord.bridge may have been switched to torch/tf by other code; normalise to numpy.
    return batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch.numpy() if hasattr(batch, "numpy") else batch)


def decode_with_decord(source: Source, settings: MediaSettings, name: str, probe: Optional[VideoProbe],
                       device: Optional[str] = None) -> tuple[np.ndarray, VideoMeta]:
    """decord VideoReader + get_batch on the sampled indices only (seeks to the key frame before each).

    Args:
        source: file bytes or path (a path is read by FFmpeg directly, no copy).
        settings: sampling and limits.
        name: file name for messages.
        probe: PyAV header facts, or None without PyAV.
        device: unused (decord decodes on the CPU); present for the registry's common signature.
    """
    from decord import DECORDError

    codec = probe.codec if probe else None
    threads = 1 if codec in SINGLE_THREAD_CODECS else 0  # 0 = decord's automatic thread count
    for attempt in (0, 1):
        try:
            vr = _decord_open(source, threads)
            total = len(vr)
            indices = _plan(name, total, settings)
            if probe is not None:
                check_pixels(name, probe.height, probe.width, len(indices), settings)
                frames = _decord_batch(vr, indices)
            else:
                # Frame size is unknown until a frame is decoded: decode the first one alone and
                # check it before decoding the rest.
                first = _decord_batch(vr, indices[:1])
                check_pixels(name, first.shape[1], first.shape[2], len(indices), settings)
                frames = first if len(indices) == 1 else np.concatenate([first, _decord_batch(vr, indices[1:])])
            break
        except (DECORDError, RuntimeError, AssertionError) as e:
            # AssertionError: decord asserts a positive frame count in VideoReader.__init__.
            reason = _decord_reason(e)
            if probe is not None and not probe.num_frames:
                # decord's errors for a stream without frames are obscure: count packets to say so.
                recount = probe_video(source, name, count_frames=True)
                if recount is not None and recount.num_frames == 0:
                    raise MediaError(f"{name}: video has no frames") from None
            if _EAGAIN in reason and threads != 1 and attempt == 0:
                log.debug("%s: decord multi-threaded decode failed (%s); retrying with one thread", name, reason)
                threads = 1
                continue
            if codec and "cannot find video stream" in reason:
                # decord asks FFmpeg for the best stream *with a decoder*: none means the codec is unsupported
                raise MediaError(f"{name}: decord's FFmpeg has no decoder for the {codec} codec "
                                 "(re-encode to H.264/HEVC/VP9, or decode with DALI on a GPU)") from None
            if "av_read_frame failed" in reason:
                reason += " (the file is damaged or truncated)"
            what = f"the {codec} video stream" if codec else "the video"
            raise MediaError(f"{name}: decord could not decode {what}: {reason}") from None
    fps = float(vr.get_avg_fps()) or (probe.fps if probe else None)
    meta = VideoMeta(num_total_frames=total, fps=fps, height=int(frames.shape[1]), width=int(frames.shape[2]),
                     indices=indices, decoder="decord", codec=codec)
    return frames, meta


# -- DALI ------------------------------------------------------------------------------------
def _frame_count_for_dali(source: Source, name: str, probe: Optional[VideoProbe]) -> int:
    """Exact frame count: DALI pads past-the-end indices with black frames instead of failing."""
    if probe is not None:
        if probe.num_frames is None:
            probe = probe_video(source, name, count_frames=True)
        if probe is not None and probe.num_frames is not None:
            return probe.num_frames
    from decord import DECORDError

    try:
        return len(_decord_open(source, 1))  # no PyAV: decord reads the count from the header
    except (DECORDError, RuntimeError, AssertionError) as e:
        raise MediaError(f"{name}: cannot read the frame count: {_decord_reason(e)}") from None


def decode_with_dali(source: Source, settings: MediaSettings, name: str, probe: Optional[VideoProbe],
                     device: str) -> tuple[np.ndarray, VideoMeta]:
    """DALI fn.decoders.video on the file's bytes with the sampled indices.

    Args:
        source: file bytes or path (read into memory: DALI decodes from a buffer).
        settings: sampling and limits.
        name: file name for messages.
        probe: PyAV header facts, or None without PyAV.
        device: "cpu" (VP8/VP9/MJPEG) or "gpu" (NVDEC).
    """
    if not dali_mod.dali_installed():
        raise ConfigError("decoder=dali needs nvidia-dali: pip install 'videoneva[dali]' (or use decoder=decord)")
    if device == "cpu" and probe is not None and probe.codec not in dali_mod.CPU_CODECS:
        raise MediaError(f"{name}: DALI's CPU decoder cannot read {probe.codec} (only {sorted(dali_mod.CPU_CODECS)}); "
                         "use decoder=decord or auto, or a CUDA GPU")
    total = _frame_count_for_dali(source, name, probe)
    indices = _plan(name, total, settings)
    if probe is not None:
        check_pixels(name, probe.height, probe.width, len(indices), settings)
    device_id = dali_mod.default_device_id() or 0
    frames = dali_mod.get_decoder(device, device_id).decode(_as_bytes(source), indices, name)
    if probe is None:
        check_pixels(name, frames.shape[1], frames.shape[2], len(indices), settings)
    meta = VideoMeta(num_total_frames=total, fps=probe.fps if probe else None, height=int(frames.shape[1]),
                     width=int(frames.shape[2]), indices=indices, decoder=f"dali-{device}",
                     codec=probe.codec if probe else None)
    return frames, meta


# -- choice ----------------------------------------------------------------------------------
# name → fn(source, settings, name, probe, device) -> (frames uint8 [F, H, W, 3], VideoMeta)
DECODERS: dict[str, Callable[..., tuple[np.ndarray, VideoMeta]]] = {
    "decord": decode_with_decord,
    "dali": decode_with_dali,
}
_LOGGED: set[str] = set()
_LOGGED_LOCK = threading.Lock()


def _log_once(reason: str) -> None:
    with _LOGGED_LOCK:
        if reason in _LOGGED:
            return
        _LOGGED.add(reason)
    log.info("video decoder: %s", reason)


def choose_decoder(requested: str, codec: Optional[str]) -> tuple[str, Optional[str], str]:
    """(backend, device, reason) for a file; backend "decord" | "dali", device "cpu" | "gpu" | None.

    Args:
        requested: settings.decoder — "auto", "decord" or "dali".
        codec: FFmpeg codec name from the probe, or None when unknown (PyAV not installed).
    """
    if requested == "decord":
        return "decord", None, "decord (decoder=decord)"
    has_dali = dali_mod.dali_installed()
    gpus = dali_mod.cuda_device_count() if has_dali else 0
    if requested == "dali":
        if not has_dali:
            raise ConfigError("decoder=dali needs nvidia-dali: pip install 'videoneva[dali]' (or use decoder=decord)")
        return ("dali", "gpu", "DALI on the GPU (decoder=dali)") if gpus else ("dali", "cpu", "DALI on the CPU (decoder=dali, no CUDA)")
    if requested != "auto":
        raise ConfigError(f"decoder={requested!r} is not valid; choose one of ['auto', 'decord', 'dali']")
    if not has_dali:
        return "decord", None, "decord (nvidia-dali is not installed)"
    if gpus:
        return "dali", "gpu", "DALI on the GPU (CUDA available)"
    if codec in dali_mod.CPU_CODECS:
        return "dali", "cpu", f"DALI's CPU decoder for {codec} (no CUDA)"
    if codec is None:
        return "decord", None, "decord (no CUDA, and the codec is unknown without PyAV so DALI's CPU decoder is not tried)"
    return "decord", None, f"decord (no CUDA, and DALI's CPU decoder cannot read {codec})"


def decode_video(data: Source, settings: MediaSettings, name: Optional[str] = None) -> tuple[np.ndarray, VideoMeta]:
    """Decode only the sampled frames of a video.

    Args:
        data: the encoded file's bytes, or a path to it.
        settings: sampling (num_frames, splice_single_frame), decoder choice and limits.
        name: how the file is named in error messages (default: the path, or "<bytes>").

    Returns:
        frames uint8 [F, H, W, 3] RGB (F = num_frames, 1 when splicing, all frames for -1) and VideoMeta.
    """
    name = source_name(data, name)
    check_source_size(data, settings.max_bytes, name)
    probe = probe_video(data, name)  # None without PyAV
    if probe is not None and probe.width * probe.height > settings.max_frame_pixels:
        check_pixels(name, probe.height, probe.width, 1, settings)
    backend, device, reason = choose_decoder(settings.decoder, probe.codec if probe else None)
    _log_once(reason)
    try:
        frames, meta = DECODERS[backend](data, settings, name, probe, device)
    except dali_mod.DaliDecodeError as e:
        if settings.decoder != "auto":
            raise
        log.warning("%s; falling back to decord", e)
        frames, meta = DECODERS["decord"](data, settings, name, probe, None)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != len(meta.indices) or frames.shape[-1] != 3:
        raise MediaError(f"{name}: {meta.decoder} returned {frames.dtype} {frames.shape}, "
                         f"expected uint8 [{len(meta.indices)}, H, W, 3]")
    return frames, meta


# -- images ----------------------------------------------------------------------------------
def decode_image(data: Source, settings: Optional[MediaSettings] = None, name: Optional[str] = None) -> np.ndarray:
    """Decode an image with PIL into uint8 [1, H, W, 3] RGB (NeMo: `Image.open(...).convert('RGB')`).

    Args:
        data: the encoded image's bytes, or a path to it.
        settings: for max_bytes / max_frame_pixels (defaults when None).
        name: how the file is named in error messages.
    """
    return decode_image_with_format(data, settings, name)[0]


def decode_image_with_format(data: Source, settings: Optional[MediaSettings] = None,
                             name: Optional[str] = None) -> tuple[np.ndarray, Optional[str]]:
    """decode_image plus PIL's name for the file format ("PNG", "JPEG", …)."""
    from PIL import Image, UnidentifiedImageError

    settings = settings or MediaSettings(media_type="image")
    name = source_name(data, name)
    check_source_size(data, settings.max_bytes, name)
    try:
        with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as img:
            width, height = img.size  # header only: checked before the pixels are decoded
            check_pixels(name, height, width, 1, settings)
            fmt = img.format
            rgb = np.asarray(img.convert("RGB"))
    except UnidentifiedImageError:
        raise MediaError(f"{name}: not an image PIL can identify") from None
    except Image.DecompressionBombError as e:
        raise MediaError(f"{name}: refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data (some PIL plugins raise SyntaxError)
        raise MediaError(f"{name}: cannot decode image: {e}") from None
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise MediaError(f"{name}: image decoded to {rgb.dtype} {rgb.shape}, expected uint8 [H, W, 3]")
    return rgb[None], fmt  # [1, H, W, 3]
