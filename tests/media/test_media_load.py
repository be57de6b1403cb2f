"""load_media / load_media_bytes end to end, folder vs tar vs bytes, and the content hash."""
from __future__ import annotations

import dataclasses
import shutil
import tarfile

import numpy as np
import pytest

from videoneva.media import MediaRoot, MediaSettings, load_media, load_media_bytes, media_content_hash, media_hash


@pytest.fixture(scope="module")
def roots(tmp_path_factory, vids):
    d = tmp_path_factory.mktemp("roots")
    folder = d / "folder"
    (folder / "videos").mkdir(parents=True)
    shutil.copy(vids["h264"], folder / "videos" / "clip.mp4")
    shutil.copy(vids["h264"], folder / "videos" / "same_content.mp4")
    from PIL import Image

    Image.fromarray(vids["frames"][5]).save(folder / "still.png")
    tar = d / "media.tar"
    with tarfile.open(tar, "w") as t:
        t.add(folder / "videos" / "clip.mp4", arcname="videos/clip.mp4")
        t.add(folder / "still.png", arcname="still.png")
    return {"folder": MediaRoot(folder), "tar": MediaRoot(tar), "bytes": (folder / "videos" / "clip.mp4").read_bytes()}


def test_folder_tar_and_bytes_agree(roots):
    s = MediaSettings(num_frames=4, decoder="decord")
    a = load_media(roots["folder"], "videos/clip.mp4", s)
    b = load_media(roots["tar"], "videos/clip.mp4", s)
    c = load_media_bytes(roots["bytes"], s, name="clip.mp4")
    assert a.pixel_values.shape == (4, 3, 224, 224) and a.pixel_values.dtype == np.float32
    np.testing.assert_array_equal(a.pixel_values, b.pixel_values)
    np.testing.assert_array_equal(a.pixel_values, c.pixel_values)
    assert a.content_hash == b.content_hash == c.content_hash == media_content_hash(roots["bytes"], s)
    assert media_hash(roots["folder"], "videos/clip.mp4", s) == media_hash(roots["tar"], "videos/clip.mp4", s) == a.content_hash
    assert a.meta.indices == [0, 9, 19, 29] and a.meta.decoder == "decord"


def test_image_sample(roots):
    s = MediaSettings(media_type="image")
    a = load_media(roots["folder"], "still.png", s)
    b = load_media(roots["tar"], "still.png", s)
    assert a.pixel_values.shape == (1, 3, 224, 224)
    np.testing.assert_array_equal(a.pixel_values, b.pixel_values)
    assert (a.meta.decoder, a.meta.codec, a.meta.indices, a.meta.height, a.meta.width) == ("pil", "PNG", [0], 64, 96)


def test_hash_is_content_addressed(roots):
    s = MediaSettings()
    assert (load_media(roots["folder"], "videos/clip.mp4", s).content_hash
            == load_media(roots["folder"], "videos/same_content.mp4", s).content_hash)


@pytest.mark.parametrize("change", [
    {"num_frames": 4}, {"num_frames": -1}, {"splice_single_frame": "middle"}, {"image_size": 336},
    {"crop_size": 112}, {"image_aspect_ratio": "pad"}, {"media_type": "image"}, {"decoder": "decord"},
    {"image_mean": (0.5, 0.5, 0.5)}, {"image_std": (0.5, 0.5, 0.5)},
])
def test_hash_changes_with_output_settings(roots, change):
    base = MediaSettings()
    data = roots["bytes"]
    assert media_content_hash(data, base) != media_content_hash(data, dataclasses.replace(base, **change))


def test_hash_changes_with_bytes_not_with_limits(roots):
    s = MediaSettings()
    data = roots["bytes"]
    h = media_content_hash(data, s)
    assert len(h) == 64 and h == media_content_hash(bytes(data), MediaSettings())
    assert h != media_content_hash(data[:-1] + bytes([data[-1] ^ 1]), s)
    assert h == media_content_hash(data, dataclasses.replace(s, max_bytes=10**6, max_frame_pixels=10**5))
    assert h == media_content_hash(data, MediaSettings(image_mean=list(s.image_mean)))  # list vs tuple


def test_payload_must_be_bytes():
    from videoneva.errors import MediaError

    with pytest.raises(MediaError, match="payload: media payload must be bytes, got str"):
        load_media_bytes("clip.mp4", MediaSettings(), name="payload")
