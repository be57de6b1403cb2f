"""Frame selection (NeMo semantics) and MediaSettings validation."""
from __future__ import annotations

import numpy as np
import pytest

from videoneva.errors import ConfigError
from videoneva.media.frames import select_frame_indices
from videoneva.media.settings import CLIP_MEAN, MediaSettings


def nemo_indices(total: int, num_frames: int) -> list[int]:
    """NeMo's TarOrFolderVideoLoader.flatten_frames, on indices instead of frames."""
    n = min(total, num_frames)
    idx = list(np.linspace(0, total - 1, n, dtype=int))
    while len(idx) < num_frames:
        idx.append(idx[-1])
    return [int(i) for i in idx]


def test_uniform_sampling_truncates_like_numpy_linspace():
    assert select_frame_indices(100, 8) == [0, 14, 28, 42, 56, 70, 84, 99]
    assert select_frame_indices(30, 8) == [0, 4, 8, 12, 16, 20, 24, 29]


@pytest.mark.parametrize("total", [1, 2, 3, 7, 8, 9, 31, 1800])
@pytest.mark.parametrize("num_frames", [1, 4, 8, 24])
def test_matches_nemo_on_a_grid(total, num_frames):
    assert select_frame_indices(total, num_frames) == nemo_indices(total, num_frames)


def test_short_video_is_padded_with_its_last_frame():
    assert select_frame_indices(3, 8) == [0, 1, 2, 2, 2, 2, 2, 2]
    assert select_frame_indices(1, 4) == [0, 0, 0, 0]


def test_all_frames():
    assert select_frame_indices(5, -1) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("where,expected", [("first", 0), ("middle", 5), ("last", 9)])
def test_splice_single_frame(where, expected):
    assert select_frame_indices(10, 8, where) == [expected]
    assert select_frame_indices(10, -1, where) == [expected]  # splicing wins over num_frames
    assert select_frame_indices(1, 8, where) == [0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 1 frame"):
        select_frame_indices(0, 8)
    with pytest.raises(ValueError, match="num_frames"):
        select_frame_indices(10, 0)
    with pytest.raises(ValueError, match="splice_single_frame"):
        select_frame_indices(10, 8, "centre")


@pytest.mark.parametrize("kwargs,key", [
    ({"media_type": "audio"}, "media_type"),
    ({"num_frames": 0}, "num_frames"),
    ({"num_frames": -2}, "num_frames"),
    ({"splice_single_frame": "centre"}, "splice_single_frame"),
    ({"image_size": 0}, "image_size"),
    ({"image_aspect_ratio": "stretch"}, "image_aspect_ratio"),
    ({"decoder": "ffmpeg"}, "decoder"),
    ({"image_std": (1.0, 0.0, 1.0)}, "image_std"),
    ({"image_mean": (0.5, 0.5)}, "image_mean"),
    ({"max_bytes": 0}, "max_bytes"),
])
def test_settings_validation_names_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        MediaSettings(**kwargs)


def test_settings_lists_become_tuples_and_choices_are_listed():
    s = MediaSettings(image_mean=list(CLIP_MEAN), image_std=[0.5, 0.5, 0.5])
    assert s.image_mean == CLIP_MEAN and s.image_std == (0.5, 0.5, 0.5)
    with pytest.raises(ConfigError, match=r"\['auto', 'decord', 'dali'\]"):
        MediaSettings(decoder="x")
