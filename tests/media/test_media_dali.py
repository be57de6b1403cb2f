"""DALI decoder: CPU VP9/MJPEG decode vs decord, the auto choice and its logged reason, the GPU path (skipped without CUDA)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from media_helpers import match_indices

from videoneva.errors import ConfigError, MediaError
from videoneva.media import decoders
from videoneva.media.decoders import choose_decoder, decode_video
from videoneva.media.settings import MediaSettings

dali = decoders.dali_mod
pytestmark = pytest.mark.skipif(not dali.dali_installed(), reason="nvidia-dali is not installed (pip install 'videoneva[dali]')")
needs_cpu_only = pytest.mark.skipif(dali.cuda_device_count() > 0, reason="CUDA present: auto picks DALI on the GPU")


@pytest.fixture(autouse=True)
def fresh_reason_log():
    decoders._LOGGED.clear()  # the reason is logged once per process; each test wants to see it
    yield


@pytest.mark.parametrize("codec", ["vp9", "mjpeg"])
def test_dali_cpu_matches_decord(vids, codec):
    a, ma = decode_video(vids[codec], MediaSettings(num_frames=8, decoder="dali"))
    b, mb = decode_video(vids[codec], MediaSettings(num_frames=8, decoder="decord"))
    assert ma.decoder == ("dali-gpu" if dali.cuda_device_count() else "dali-cpu") and mb.decoder == "decord"
    assert ma.indices == mb.indices and ma.num_total_frames == mb.num_total_frames == 30
    assert a.shape == b.shape == (8, 64, 96, 3)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    # both decode the same bitstream; only YUV→RGB conversion/rounding differs (seen: mean ≈ 1, max ≈ 25)
    assert diff.mean() < 3 and diff.max() < 48, (diff.mean(), diff.max())
    assert match_indices(a, vids["frames"]) == ma.indices


def test_dali_splice_last(vids):
    frames, meta = decode_video(vids["mjpeg"], MediaSettings(splice_single_frame="last", decoder="dali"))
    assert meta.indices == [29] and match_indices(frames, vids["frames"]) == [29]


@needs_cpu_only
def test_auto_uses_dali_cpu_for_vp9_and_logs_why(vids, caplog):
    with caplog.at_level(logging.INFO, logger="videoneva.media.decoders"):
        _, meta = decode_video(vids["vp9"], MediaSettings())
    assert meta.decoder == "dali-cpu"
    assert "DALI's CPU decoder for vp9 (no CUDA)" in caplog.text


@needs_cpu_only
def test_auto_falls_back_to_decord_for_h264_and_logs_why(vids, caplog):
    with caplog.at_level(logging.INFO, logger="videoneva.media.decoders"):
        _, meta = decode_video(vids["h264"], MediaSettings())
        decode_video(vids["h264"], MediaSettings())
    assert meta.decoder == "decord"
    reason = "decord (no CUDA, and DALI's CPU decoder cannot read h264)"
    assert caplog.text.count(reason) == 1  # logged once, not per file


def test_auto_falls_back_when_dali_fails_on_a_file(vids, caplog, monkeypatch):
    def broken(*args, **kwargs):
        raise dali.DaliDecodeError("clip.webm: DALI (cpu) could not decode the video: boom")

    monkeypatch.setitem(decoders.DECODERS, "dali", broken)
    monkeypatch.setattr(decoders, "choose_decoder", lambda requested, codec: ("dali", "cpu", "test"))
    with caplog.at_level(logging.WARNING, logger="videoneva.media.decoders"):
        frames, meta = decode_video(vids["vp9"], MediaSettings())
    assert meta.decoder == "decord" and "boom; falling back to decord" in caplog.text
    with pytest.raises(MediaError, match="boom"):
        decode_video(vids["vp9"], MediaSettings(decoder="dali"))  # forced: no fallback


def test_choice_table(monkeypatch):
    monkeypatch.setattr(dali, "cuda_device_count", lambda: 0)
    assert choose_decoder("auto", "vp9")[:2] == ("dali", "cpu")
    assert choose_decoder("auto", "mjpeg")[:2] == ("dali", "cpu")
    assert choose_decoder("auto", "h264")[:2] == ("decord", None)
    assert choose_decoder("auto", None)[:2] == ("decord", None)
    assert choose_decoder("decord", "vp9")[:2] == ("decord", None)
    assert choose_decoder("dali", "h264")[:2] == ("dali", "cpu")
    monkeypatch.setattr(dali, "cuda_device_count", lambda: 1)
    assert choose_decoder("auto", "h264")[:2] == ("dali", "gpu")
    monkeypatch.setattr(dali, "dali_installed", lambda: False)
    assert choose_decoder("auto", "vp9") == ("decord", None, "decord (nvidia-dali is not installed)")
    with pytest.raises(ConfigError, match="nvidia-dali"):
        choose_decoder("dali", "vp9")


def test_frame_count_for_webm_is_counted(vids):
    from videoneva.media.probe import probe_video

    probe = probe_video(vids["vp9"], "clip.webm")
    assert probe.num_frames is None  # WebM headers carry no frame count …
    assert decoders._frame_count_for_dali(vids["vp9"], "clip.webm", probe) == 30  # … so packets are counted


@pytest.mark.gpu
def test_dali_gpu_decodes_h264_like_decord(vids):
    if dali.cuda_device_count() < 1:
        pytest.skip("DALI sees no CUDA device")
    a, ma = decode_video(vids["h264"], MediaSettings(decoder="dali"))
    b, mb = decode_video(vids["h264"], MediaSettings(decoder="decord"))
    assert ma.decoder == "dali-gpu" and ma.indices == mb.indices
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.mean() < 3, diff.mean()
    assert match_indices(a, vids["frames"]) == ma.indices
    _, mauto = decode_video(vids["h264"], MediaSettings())
    assert mauto.decoder == "dali-gpu"
