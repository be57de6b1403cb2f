"""Decoding real H.264 / VP9 / MJPEG files: the right frames, only the sampled ones; images; pixel limits."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from media_helpers import match_indices
from PIL import Image

from videoneva.errors import MediaError
from videoneva.media import decoders
from videoneva.media.decoders import decode_image, decode_video
from videoneva.media.frames import select_frame_indices
from videoneva.media.settings import MediaSettings

CODECS = ["h264", "vp9", "mjpeg"]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("decoder", ["auto", "decord"])
def test_decodes_the_sampled_frames(vids, codec, decoder):
    frames, meta = decode_video(vids[codec], MediaSettings(num_frames=8, decoder=decoder))
    n = len(vids["frames"])
    assert frames.dtype == np.uint8 and frames.shape == (8, 64, 96, 3)
    assert meta.num_total_frames == n and meta.indices == select_frame_indices(n, 8)
    assert (meta.height, meta.width, meta.fps) == (64, 96, 8.0)
    assert meta.codec == codec
    assert match_indices(frames, vids["frames"]) == meta.indices
    if decoder == "decord":
        assert meta.decoder == "decord"


def test_bytes_and_path_give_the_same_frames(vids):
    s = MediaSettings(decoder="decord")
    a, _ = decode_video(vids["h264"], s)
    b, _ = decode_video(vids["h264"].read_bytes(), s)
    np.testing.assert_array_equal(a, b)


def test_only_sampled_frames_are_decoded(vids, monkeypatch):
    """decord is asked for exactly the sampled indices through get_batch, never a full read."""
    calls = []
    real_open = decoders._decord_open

    class Spy:
        def __init__(self, vr):
            self.vr = vr

        def __len__(self):
            return len(self.vr)

        def get_avg_fps(self):
            return self.vr.get_avg_fps()

        def get_batch(self, indices):
            calls.append(list(indices))
            return self.vr.get_batch(indices)

    monkeypatch.setattr(decoders, "_decord_open", lambda src, threads: Spy(real_open(src, threads)))
    _, meta = decode_video(vids["h264"], MediaSettings(num_frames=4, decoder="decord"))
    assert calls == [meta.indices] == [[0, 9, 19, 29]]


def test_short_video_padding_end_to_end(vids):
    frames, meta = decode_video(vids["short"], MediaSettings(num_frames=8, decoder="decord"))
    assert meta.num_total_frames == 3 and meta.indices == [0, 1, 2, 2, 2, 2, 2, 2]
    assert match_indices(frames, vids["frames"][:3]) == meta.indices
    for f in frames[3:]:
        np.testing.assert_array_equal(f, frames[2])


@pytest.mark.parametrize("where,index", [("first", 0), ("middle", 15), ("last", 29)])
def test_splice_single_frame(vids, where, index):
    frames, meta = decode_video(vids["h264"], MediaSettings(splice_single_frame=where, decoder="decord"))
    assert frames.shape[0] == 1 and meta.indices == [index]
    assert match_indices(frames, vids["frames"]) == [index]


def test_all_frames(vids):
    frames, meta = decode_video(vids["mjpeg"], MediaSettings(num_frames=-1, decoder="decord"))
    assert frames.shape[0] == 30 and meta.indices == list(range(30))
    assert match_indices(frames, vids["frames"]) == list(range(30))


def test_without_pyav_decord_still_decodes_and_checks_pixels(vids, monkeypatch, caplog):
    monkeypatch.setattr(decoders, "probe_video", lambda *a, **k: None)
    decoders._LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="videoneva.media.decoders"):
        frames, meta = decode_video(vids["vp9"], MediaSettings(decoder="auto"))
    assert meta.decoder == "decord" and meta.codec is None
    assert match_indices(frames, vids["frames"]) == meta.indices
    if decoders.dali_mod.dali_installed():
        assert "codec is unknown without PyAV" in caplog.text
    with pytest.raises(MediaError, match="max_frame_pixels"):
        decode_video(vids["h264"], MediaSettings(decoder="decord", max_frame_pixels=1000))
    with pytest.raises(MediaError, match="max_decoded_pixels"):
        decode_video(vids["h264"], MediaSettings(decoder="decord", num_frames=-1, max_decoded_pixels=64 * 96 * 10))


def test_pixel_limits(vids):
    with pytest.raises(MediaError, match=r"clip.mp4: frame is 96x64 = 6144 pixels, over the limit max_frame_pixels=6000"):
        decode_video(vids["h264"], MediaSettings(max_frame_pixels=6000))
    with pytest.raises(MediaError, match="max_decoded_pixels.*num_frames"):
        decode_video(vids["h264"], MediaSettings(num_frames=-1, max_decoded_pixels=64 * 96 * 29))
    frames, _ = decode_video(vids["h264"], MediaSettings(num_frames=-1, max_decoded_pixels=64 * 96 * 30))
    assert frames.shape[0] == 30


def _encode_image(arr: np.ndarray, fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def test_images_png_jpeg_and_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    png = decode_image(_encode_image(rgb, "PNG"))
    assert png.shape == (1, 45, 70, 3) and png.dtype == np.uint8
    np.testing.assert_array_equal(png[0], rgb)
    smooth = np.broadcast_to(np.linspace(0, 255, 70, dtype=np.uint8)[None, :, None], (45, 70, 3)).copy()
    jpg = decode_image(_encode_image(smooth, "JPEG"))
    assert jpg.shape == (1, 45, 70, 3) and np.abs(jpg[0].astype(int) - smooth).mean() < 3
    (tmp_path / "a.png").write_bytes(_encode_image(rgb, "PNG", "RGBA"))
    np.testing.assert_array_equal(decode_image(tmp_path / "a.png")[0], rgb)  # alpha dropped
    gray = decode_image(_encode_image(rgb, "PNG", "L"))
    assert gray.shape == (1, 45, 70, 3) and np.array_equal(gray[0, ..., 0], gray[0, ..., 2])


def test_image_pixel_limit_is_checked_before_decoding():
    data = _encode_image(np.zeros((100, 100, 3), np.uint8), "PNG")
    with pytest.raises(MediaError, match="max_frame_pixels=9999"):
        decode_image(data, MediaSettings(media_type="image", max_frame_pixels=9999), name="big.png")
