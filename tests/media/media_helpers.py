"""Helpers for tests/media (importable by name: pytest puts this folder on sys.path)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def match_indices(decoded: np.ndarray, originals: np.ndarray) -> list[int]:
    """For each decoded frame, the index of the closest original frame (mean absolute difference)."""
    d = decoded.astype(np.float32).reshape(len(decoded), 1, -1)
    o = originals.astype(np.float32).reshape(1, len(originals), -1)
    return np.abs(d - o).mean(-1).argmin(1).tolist()


def write_zero_frame_avi(path: Path) -> Path:
    """An AVI with an MJPEG video stream header and no frames."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=Fraction(8, 1))
        s.width, s.height, s.pix_fmt = 96, 64, "yuvj420p"
        c.start_encoding()
    return path


def pyav_can_encode(name: str) -> bool:
    import av

    try:
        av.codec.Codec(name, "w")
    except ValueError:  # av.codec.codec.UnknownCodecError
        return False
    return True
