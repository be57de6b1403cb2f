"""CLIP preprocessing: parity with transformers' CLIPImageProcessor, NeMo's pad and keep modes."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from videoneva.media.preprocess import expand_to_square, fill_colour, keep_shortest_edge, preprocess_frames
from videoneva.media.settings import CLIP_MEAN, CLIP_STD, MediaSettings


def reference_processor(image_size=224, crop_size=224):
    """A CLIPImageProcessor configured like openai/clip-vit-large-patch14's preprocessor_config.json."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(do_resize=True, size={"shortest_edge": image_size}, resample=3, do_center_crop=True,
                              crop_size={"height": crop_size, "width": crop_size}, do_rescale=True,
                              rescale_factor=1 / 255, do_normalize=True, image_mean=list(CLIP_MEAN),
                              image_std=list(CLIP_STD), do_convert_rgb=True)


def frames_of(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("shape", [(3, 90, 160, 3), (2, 300, 200, 3), (1, 224, 224, 3), (2, 17, 33, 3)])
@pytest.mark.parametrize("size", [224, 336])
def test_square_equals_clip_image_processor(shape, size):
    frames = frames_of(shape)
    ours = preprocess_frames(frames, MediaSettings(image_size=size, crop_size=size))
    ref = reference_processor(size, size)([Image.fromarray(f) for f in frames], return_tensors="np")["pixel_values"]
    assert ours.dtype == np.float32 and ours.shape == (shape[0], 3, size, size)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def nemo_expand2square(img: Image.Image, colour) -> Image.Image:
    """NeMo's expand2square (PIL paste onto a mean-coloured square)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), colour)
    out.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return out


@pytest.mark.parametrize("shape", [(2, 90, 160, 3), (2, 161, 90, 3), (1, 50, 50, 3)])
def test_pad_equals_nemo(shape):
    frames = frames_of(shape, seed=1)
    colour = fill_colour(CLIP_MEAN)
    assert colour == (122, 116, 104)
    ours = preprocess_frames(frames, MediaSettings(image_aspect_ratio="pad"))
    padded = [nemo_expand2square(Image.fromarray(f), colour) for f in frames]
    ref = reference_processor()(padded, return_tensors="np")["pixel_values"]
    assert ours.shape == (shape[0], 3, 224, 224)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(expand_to_square(frames, colour), np.stack([np.asarray(p) for p in padded]))


def test_pad_border_is_the_mean_colour():
    out = preprocess_frames(frames_of((1, 60, 240, 3)), MediaSettings(image_aspect_ratio="pad"))
    # the top rows are pure fill colour: normalised, int(m*255)/255 - m is tiny
    assert np.abs(out[0, :, :5, :]).max() < 0.02


@pytest.mark.parametrize("h,w,edge,out_hw", [
    (120, 320, 168, (168, 448)),   # aspect 2.67: 448/2.67 = 168 < 224
    (90, 160, 224, (224, 398)),    # aspect 1.78: capped at 224
    (320, 120, 168, (448, 168)),   # portrait
    (100, 100, 224, (224, 224)),
])
def test_keep_shapes(h, w, edge, out_hw):
    assert keep_shortest_edge(h, w, 224) == edge
    frames = frames_of((3, h, w, 3), seed=2)
    out = preprocess_frames(frames, MediaSettings(image_aspect_ratio="keep"))
    assert out.shape == (3, 3, *out_hw)  # one shape for every frame of the video, no crop
    ref = reference_processor()([Image.fromarray(f) for f in frames], return_tensors="np",
                                do_center_crop=False, size={"shortest_edge": edge})["pixel_values"]
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_keep_scales_with_image_size():
    assert keep_shortest_edge(120, 320, 336) == int(min(672 / (320 / 120), 336))


def test_bad_frames_rejected():
    with pytest.raises(ValueError, match=r"uint8 \[F>=1, H, W, 3\]"):
        preprocess_frames(np.zeros((2, 10, 10, 3), np.float32), MediaSettings())
    with pytest.raises(ValueError, match="got uint8 \\[10, 10, 3\\]"):
        preprocess_frames(np.zeros((10, 10, 3), np.uint8), MediaSettings())


def test_tiny_frames_are_not_mistaken_for_channels_first():
    out = preprocess_frames(frames_of((2, 3, 8, 3)), MediaSettings(image_size=16, crop_size=16))
    assert out.shape == (2, 3, 16, 16)
