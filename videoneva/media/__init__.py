"""videoneva.media: media sources (folder/.tar), video/image decoders, frame selection, CLIP preprocessing."""
try:  # PyAV must load its FFmpeg before decord's bundled one, or PyAV's VP9 encoder fails to open.
    import av  # noqa: F401
except ImportError:  # PyAV is optional at run time (only tests and demo-data write videos)
    pass

import hashlib  # noqa: E402
import json  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional, Union  # noqa: E402

import numpy as np  # noqa: E402

from videoneva.errors import MediaError  # noqa: E402
from videoneva.media.decoders import (VideoMeta, check_source_size, decode_image, decode_image_with_format,  # noqa: E402
                                      decode_video)
from videoneva.media.frames import select_frame_indices  # noqa: E402
from videoneva.media.preprocess import preprocess_frames  # noqa: E402
from videoneva.media.settings import CLIP_MEAN, CLIP_STD, MediaSettings  # noqa: E402
from videoneva.media.sources import MediaRoot  # noqa: E402

__all__ = ["MediaSample", "MediaSettings", "MediaRoot", "VideoMeta", "load_media", "load_media_bytes", "decode_media",
           "media_source", "source_digest", "media_report", "media_content_hash", "media_hash", "media_digest", "key_for_digest", "decode_video", "decode_image",
           "preprocess_frames", "select_frame_indices", "CLIP_MEAN", "CLIP_STD"]

_HASH_VERSION = b"videoneva-media-v2"
_CHUNK = 1 << 20


@dataclass
class MediaSample:
    """One decoded + preprocessed media item, ready for the vision encoder."""

    pixel_values: np.ndarray   # float32 [F, 3, H, W]
    meta: VideoMeta            # images: one frame, decoder "pil", codec = image format
    content_hash: Optional[str]  # key_for_digest(digest, settings): the feature-cache key (None: not hashed)


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


def media_source(root: MediaRoot, rel: str, max_bytes: int) -> Union[bytes, Path]:
    """What the decoder reads for a path under a root: the file on disk, or a tar member's bytes.

    Raises MediaError for a path outside the root, a missing file, or one over max_bytes.
    """
    local = root.local_path(rel)
    if local is not None:
        check_source_size(local, max_bytes, rel)
        return local
    data = root.read_bytes(rel, max_bytes)
    check_source_size(data, max_bytes, rel)
    return data


def source_digest(source: Union[bytes, Path]) -> str:
    """media_digest of bytes, or of a file's content read in chunks."""
    if not isinstance(source, Path):
        return media_digest(bytes(source))
    h = hashlib.sha256()
    with open(source, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def media_hash(root: MediaRoot, rel: str, settings: MediaSettings) -> str:
    """The content hash load_media would give, without decoding (check a feature cache first).

    Args:
        root: the media root.
        rel: path relative to the root.
        settings: media settings; max_bytes applies.
    """
    return key_for_digest(source_digest(media_source(root, rel, settings.max_bytes)), settings)


def _decode(source: Union[bytes, Path], settings: MediaSettings, name: str) -> tuple[np.ndarray, VideoMeta]:
    if settings.media_type == "image":
        frames, fmt = decode_image_with_format(source, settings, name)
        h, w = frames.shape[1:3]
        return frames, VideoMeta(num_total_frames=1, fps=None, height=h, width=w, indices=[0], decoder="pil", codec=fmt)
    return decode_video(source, settings, name)


def decode_media(source: Union[bytes, Path], settings: MediaSettings, name: str,
                 content_hash: Optional[str] = None) -> MediaSample:
    """Decode (sampled frames only) and preprocess one media item; no hashing.

    Args:
        source: the encoded file's bytes or its path (media_source gives either).
        settings: what to sample and how to preprocess; max_bytes applies.
        name: how the media is named in error messages.
        content_hash: the caller's feature-cache key for it, carried into the sample.
    """
    if isinstance(source, (bytearray, memoryview)):
        source = bytes(source)
    if not isinstance(source, (bytes, Path)):
        raise MediaError(f"{name}: media payload must be bytes, got {type(source).__name__}")
    check_source_size(source, settings.max_bytes, name)
    frames, meta = _decode(source, settings, name)
    return MediaSample(preprocess_frames(frames, settings), meta, content_hash)


def media_report(sample: MediaSample) -> dict:
    """What an answer reports about decoded media (JSON-ready)."""
    m = sample.meta
    return {"num_frames": int(sample.pixel_values.shape[0]), "frame_indices": [int(i) for i in m.indices],
            "num_total_frames": m.num_total_frames, "decoder": m.decoder, "codec": m.codec}


def load_media(root: MediaRoot, rel: str, settings: MediaSettings) -> MediaSample:
    """Read, hash, decode (sampled frames only) and preprocess one media file named relative to a root.

    A file on disk is hashed in chunks and handed to the decoder by path (decord reads it
    directly); a tar member is read into memory once.

    Args:
        root: the media root (folder, .tar, or None-root for paths as given).
        rel: path relative to the root (or the tar member name).
        settings: what to sample and how to preprocess; max_bytes applies.
    """
    source = media_source(root, rel, settings.max_bytes)
    # Hashed, then decoded by path: a file rewritten in between would pair new pixels with the
    # old key; media roots are read-only inputs, so one read-and-hash pass is not worth the copy.
    return decode_media(source, settings, rel, key_for_digest(source_digest(source), settings))


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
    return decode_media(data, settings, name, media_content_hash(data, settings))
