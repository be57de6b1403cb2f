"""Fixtures for tests/media: small real videos (H.264, VP9, MJPEG) encoded at test time."""
from __future__ import annotations

import pytest

import videoneva.media  # noqa: F401  (PyAV before decord)
from videoneva.media.encode import encode_video, gradient_frames

N, H, W = 30, 64, 96  # frames, height, width of the main test videos


@pytest.fixture(scope="session")
def vids(tmp_path_factory) -> dict:
    """name → Path of real encoded videos, plus "frames" → the uint8 [N, H, W, 3] they were made from."""
    d = tmp_path_factory.mktemp("vids")
    frames = gradient_frames(N, H, W, seed=7)
    out = {"frames": frames, "dir": d}
    out["h264"] = encode_video(frames, d / "clip.mp4", "h264")
    out["vp9"] = encode_video(frames, d / "clip.webm", "vp9")
    out["mjpeg"] = encode_video(frames, d / "clip.avi", "mjpeg")
    out["short"] = encode_video(frames[:3], d / "short.mp4", "h264")
    return out
