"""Which frames of a video to decode: NeMo's uniform sampling, single-frame splicing and short-video padding."""
from __future__ import annotations

from typing import Optional

import numpy as np

SPLICE = ("first", "middle", "last")


def select_frame_indices(total: int, num_frames: int, splice_single_frame: Optional[str] = None) -> list[int]:
    """Frame indices to decode, in output order (may repeat), exactly as NeMo's video loaders pick them.

    - splice_single_frame "first" → [0], "middle" → [total // 2], "last" → [total - 1].
    - num_frames == -1 → every frame, 0 … total-1.
    - otherwise `np.linspace(0, total - 1, min(total, num_frames), dtype=int)` (truncation, not
      rounding); a video with fewer than num_frames frames gives all its frames and is then
      padded to num_frames by repeating its last frame (NeMo appends `frames[-1]`).

    Args:
        total: frames in the video (>= 1).
        num_frames: frames wanted, or -1 for all.
        splice_single_frame: None or one of "first", "middle", "last" (wins over num_frames).
    """
    if total < 1:
        raise ValueError(f"a video needs at least 1 frame to sample from, got total={total}")
    if splice_single_frame is not None:
        if splice_single_frame not in SPLICE:
            raise ValueError(f"splice_single_frame must be None or one of {SPLICE}, got {splice_single_frame!r}")
        return [{"first": 0, "middle": total // 2, "last": total - 1}[splice_single_frame]]
    if num_frames == -1:
        return list(range(total))
    if num_frames < 1:
        raise ValueError(f"num_frames must be -1 or >= 1, got {num_frames}")
    picked = np.linspace(0, total - 1, min(total, num_frames), dtype=int).tolist()
    return picked + [picked[-1]] * (num_frames - len(picked))
