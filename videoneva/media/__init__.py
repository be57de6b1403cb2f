"""videoneva.media: media sources (folder/.tar), video/image decoders, frame selection, CLIP preprocessing."""
try:  # PyAV must load its FFmpeg before decord's bundled one, or PyAV's VP9 encoder fails to open.
    import av  # noqa: F401
except ImportError:  # PyAV is optional at run time (only tests and demo-data write videos)
    pass

import hashlib  # noqa: E402
import json  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Union  # noqa: E402

import numpy as np  # noqa: E402

from videoneva.errors import MediaError  # noqa: E402
from videoneva.media.decoders import (VideoMeta, check_source_size, decode_image, decode_image_with_format,  # noqa: E402
                                      decode_video)
from videoneva.media.frames import select_frame_indices  # noqa: E402
from videoneva.media.preprocess import preprocess_frames  # noqa: E402
from videoneva.media.settings import CLIP_MEAN, CLIP_STD, MediaSettings  # noqa: E402
from videoneva.media.sources import MediaRoot  # noqa: E402

__all__ = ["MediaSample", "MediaSettings", "MediaRoot", "VideoMeta", "load_media", "load_media_bytes",
           "media_content_hash", "media_hash", "media_digest", "key_for_digest", "decode_video", "decode_image",
           "preprocess_frames", "select_frame_indices", "CLIP_MEAN", "CLIP_STD"]

_HASH_VERSION = b"videoneva-media-v2"
_CHUNK = 1 << 20


@dataclass
class MediaSample:
    """One decoded + preprocessed media item, ready for the vision encoder."""

    pixel_values: np.ndarray   # float32 [F, 3, H, W]
    meta: VideoMeta            # images: one frame, decoder "pil", codec = image format
    content_hash: str          # media_content_hash(bytes, settings): the feature-cache key


def media_digest(data: bytes) -> str:
    """sha256 (hex) of the encoded file alone: what a client sends instead of media it sent before."""
    return hashlib.sha256(data).hexdigest()


def key_for_digest(digest: str, settings: MediaSettings) -> str:
    """The feature-cache key of a file with this media_digest under these settings.

    sha256 over the settings that shape the output tensor and the file's digest, so the key is
    known from the digest alone (a client need not send the bytes again to find its features).
    """
    h = hashlib.sha256(_HASH_VERSION)
    h.update(json.dumps(settings.output_key(), sort_keys=True).encode())
    h.update(b"\0")
    h.update(digest.encode("ascii"))
    return h.hexdigest()


def media_content_hash(data: bytes, settings: MediaSettings) -> str:
    """The feature-cache key of the media bytes together with the settings that shape the output tensor.

    Two requests with the same file content and the same sampling/preprocessing share a key
    whatever the file is called; the safety limits are not part of it.

    Args:
        data: the encoded file.
        settings: media settings (media_type, sampling, sizes, mean/std, aspect mode, decoder).
    """
    return key_for_digest(media_digest(data), settings)


def _file_hash(path: Path, settings: MediaSettings) -> str:
    """media_content_hash of a file's content, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return key_for_digest(h.hexdigest(), settings)


def media_hash(root: MediaRoot, rel: str, settings: MediaSettings) -> str:
    """The content hash load_media would give, without decoding (check a feature cache first).

    Args:
        root: the media root.
        rel: path relative to the root.
        settings: media settings; max_bytes applies.
    """
    local = root.local_path(rel)
    if local is not None:
        check_source_size(local, settings.max_bytes, rel)
        return _file_hash(local, settings)
    return media_content_hash(root.read_bytes(rel, settings.max_bytes), settings)


def _decode(source: Union[bytes, Path], settings: MediaSettings, name: str) -> tuple[np.ndarray, VideoMeta]:
    if settings.media_type == "image":
        frames, fmt = decode_image_with_format(source, settings, name)
        h, w = frames.shape[1:3]
        return frames, VideoMeta(num_total_frames=1, fps=None, height=h, width=w, indices=[0], decoder="pil", codec=fmt)
    return decode_video(source, settings, name)


def load_media(root: MediaRoot, rel: str, settings: MediaSettings) -> MediaSample:
    """Read, decode (sampled frames only) and preprocess one media file named relative to a root.

    A file on disk is hashed in chunks and handed to the decoder by path (decord reads it
    directly); a tar member is read into memory once.

    Args:
        root: the media root (folder, .tar, or None-root for paths as given).
        rel: path relative to the root (or the tar member name).
        settings: what to sample and how to preprocess; max_bytes applies.
    """
    local = root.local_path(rel)
    if local is not None:
        check_source_size(local, settings.max_bytes, rel)
        # Hashed, then decoded by path: a file rewritten in between would pair new pixels with the
        # old key; media roots are read-only inputs, so one read-and-hash pass is not worth the copy.
        digest = _file_hash(local, settings)
        frames, meta = _decode(local, settings, rel)
    else:
        data = root.read_bytes(rel, settings.max_bytes)
        check_source_size(data, settings.max_bytes, rel)
        digest = media_content_hash(data, settings)
        frames, meta = _decode(data, settings, rel)
    return MediaSample(preprocess_frames(frames, settings), meta, digest)


def load_media_bytes(data: bytes, settings: MediaSettings, name: str = "<bytes>") -> MediaSample:
    """load_media for media that arrives as bytes (a request payload).

    Args:
        data: the encoded video or image.
        settings: what to sample and how to preprocess; max_bytes applies.
        name: how the media is named in error messages.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MediaError(f"{name}: media payload must be bytes, got {type(data).__name__}")
    data = bytes(data)
    check_source_size(data, settings.max_bytes, name)
    frames, meta = _decode(data, settings, name)
    return MediaSample(preprocess_frames(frames, settings), meta, media_content_hash(data, settings))
