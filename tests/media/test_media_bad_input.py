"""Every kind of bad media gives a MediaError that names the file and the cause (never a crash or a hang)."""
from __future__ import annotations

import os

import numpy as np
import pytest
from media_helpers import pyav_can_encode, write_zero_frame_avi

from videoneva.errors import MediaError
from videoneva.media import MediaRoot, MediaSettings, decoders, load_media, load_media_bytes
from videoneva.media.encode import encode_video, gradient_frames


@pytest.fixture(scope="module")
def bad(tmp_path_factory, vids):
    d = tmp_path_factory.mktemp("bad")
    good = vids["h264"].read_bytes()
    (d / "empty.mp4").write_bytes(b"")
    (d / "truncated.mp4").write_bytes(good[: len(good) // 3])
    # index (moov) first, then half the frames cut off: the container opens, the data ends early
    fast = encode_video(gradient_frames(48, 64, 96), d / "fast.mp4", container_options={"movflags": "faststart"})
    (d / "cut_fast.mp4").write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "notes.txt").write_text("this is not a video\n")
    (d / "notes.png").write_text("this is not an image either\n")
    png = d / "cut.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:2000])  # of ~12 kB
    write_zero_frame_avi(d / "zero.avi")
    return d


CASES = [  # (file, media_type, words that must be in the message; PyAV's probe words some of them)
    ("missing.mp4", "video", "file not found"),
    ("empty.mp4", "video", "empty (0 bytes)"),
    ("truncated.mp4", "video", "truncated"),
    ("cut_fast.mp4", "video", "truncated"),
    ("random.mp4", "video", "not a video"),
    ("notes.txt", "video", "not a video"),
    ("zero.avi", "video", "no frames"),
    ("notes.png", "image", "not an image"),
    ("cut.png", "image", "cannot decode image"),
    ("empty.mp4", "image", "empty (0 bytes)"),
]


@pytest.mark.parametrize("decoder", ["auto", "decord"])
@pytest.mark.parametrize("rel,media_type,cause", CASES)
def test_bad_files_raise_media_error(bad, rel, media_type, cause, decoder):
    s = MediaSettings(media_type=media_type, decoder=decoder)
    with pytest.raises(MediaError) as e:
        load_media(MediaRoot(bad), rel, s)
    msg = str(e.value)
    assert msg.startswith(rel + ":"), msg
    assert cause in msg, msg
    if rel != "missing.mp4":
        with pytest.raises(MediaError) as e2:
            load_media_bytes((bad / rel).read_bytes(), s, name="payload")
        assert str(e2.value).startswith("payload:")


@pytest.mark.parametrize("rel", ["truncated.mp4", "cut_fast.mp4", "random.mp4", "notes.txt"])
def test_bad_files_without_pyav_probe(bad, rel, monkeypatch):
    """decord's own errors become MediaError too when PyAV is not there to probe first."""
    monkeypatch.setattr(decoders, "probe_video", lambda *a, **k: None)
    with pytest.raises(MediaError, match=f"{rel}: decord could not decode the video"):
        load_media(MediaRoot(bad), rel, MediaSettings(decoder="decord"))


def test_probe_names_the_cause(bad):
    with pytest.raises(MediaError, match=r"truncated.mp4: not a readable video container \(.*Invalid data"):
        load_media(MediaRoot(bad), "truncated.mp4", MediaSettings())


def test_escapes_are_media_errors(bad, tmp_path):
    (tmp_path / "outside.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "outside.mp4", bad / "link.mp4")
    root = MediaRoot(bad)
    for rel, cause in (("../outside.mp4", "escapes"), (str(tmp_path / "outside.mp4"), "absolute"),
                       ("link.mp4", "outside the media root")):
        with pytest.raises(MediaError, match=cause):
            load_media(root, rel, MediaSettings())


def test_size_limit(vids):
    size = vids["h264"].stat().st_size
    s = MediaSettings(max_bytes=size - 1)
    with pytest.raises(MediaError, match=f"clip.mp4: file is {size} bytes, over the limit max_bytes={size - 1}"):
        load_media(MediaRoot(vids["dir"]), "clip.mp4", s)
    with pytest.raises(MediaError, match="max_bytes"):
        load_media_bytes(vids["h264"].read_bytes(), s)


@pytest.mark.skipif(not pyav_can_encode("libsvtav1"), reason="this PyAV build has no AV1 encoder (libsvtav1)")
def test_codec_decord_cannot_read(tmp_path):
    import av
    from fractions import Fraction

    path = tmp_path / "clip_av1.mkv"
    with av.open(str(path), "w") as c:
        st = c.add_stream("libsvtav1", rate=Fraction(8, 1), options={"preset": "12", "svt-params": "log-level=0"})
        st.width, st.height, st.pix_fmt = 96, 64, "yuv420p"
        for f in gradient_frames(4, 64, 96):
            for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    with pytest.raises(MediaError, match="clip_av1.mkv: decord's FFmpeg has no decoder for the av1 codec"):
        load_media(MediaRoot(tmp_path), "clip_av1.mkv", MediaSettings(decoder="decord"))


@pytest.mark.skipif(not decoders.dali_mod.dali_installed(), reason="nvidia-dali is not installed")
def test_codec_dali_cpu_cannot_read(vids):
    if decoders.dali_mod.cuda_device_count():
        pytest.skip("CUDA present: DALI decodes H.264 on the GPU")
    with pytest.raises(MediaError, match="clip.mp4: DALI's CPU decoder cannot read h264"):
        load_media(MediaRoot(vids["dir"]), "clip.mp4", MediaSettings(decoder="dali"))


def test_hevc_and_mpeg4_are_readable(tmp_path):
    """Codecs decord does read (control for the cases above)."""
    frames = gradient_frames(6, 64, 96)
    for codec, name in (("hevc", "h.mkv"), ("mpeg4", "m.avi")):
        encode_video(frames, tmp_path / name, codec)
        sample = load_media(MediaRoot(tmp_path), name, MediaSettings(num_frames=3, decoder="decord"))
        assert sample.pixel_values.shape == (3, 3, 224, 224) and sample.meta.codec == codec
