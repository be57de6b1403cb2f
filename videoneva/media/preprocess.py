"""CLIP preprocessing of decoded frames (resize, centre crop, rescale, normalise) with NeMo's image_aspect_ratio modes.

The work is done by transformers' PIL-based CLIPImageProcessor itself (bicubic shortest-edge
resize, centre crop, 1/255 rescale, mean/std), so 'square' is by construction what NeMo feeds
the vision tower. The PIL variant is pinned: the torchvision "fast" processor resizes slightly
differently and would make training and serving disagree across machines.

Modes (NeMo `data.image_aspect_ratio`):
  square  resize shortest edge to image_size, centre-crop crop_size (NeMo's default).
  pad     first expand each frame to a square filled with the mean colour (int(m * 255) per
          channel, the frame centred), then 'square'.
  keep    no crop: shortest edge = int(min(2 * image_size / aspect, image_size)), aspect =
          long / short side. NeMo hard-codes 448 / 224 (equal to ours at image_size 224) and its
          video branch is broken (it reads `.size` of a list of frames); here the aspect comes
          from the video's frame size, which all frames share, so one video gives one shape
          [F, 3, h, w]. The vision tower must accept non-square input in this mode.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from videoneva.media.settings import MediaSettings


@lru_cache(maxsize=16)
def clip_processor(image_size: int, crop_size: int, mean: tuple[float, ...], std: tuple[float, ...]):
    """transformers' slow (PIL) CLIPImageProcessor with these sizes and statistics (cached)."""
    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers >= 5 names the PIL one so
    except ImportError:
        from transformers import CLIPImageProcessor as Processor  # 4.x: the default class is the PIL one
    return Processor(size={"shortest_edge": image_size}, crop_size={"height": crop_size, "width": crop_size},
                     do_resize=True, do_center_crop=True, do_rescale=True, rescale_factor=1 / 255,
                     do_normalize=True, image_mean=list(mean), image_std=list(std), resample=3,  # 3 = bicubic
                     do_convert_rgb=False)


def fill_colour(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """NeMo's pad colour: `tuple(int(x * 255) for x in image_mean)`."""
    return tuple(int(x * 255) for x in mean)  # type: ignore[return-value]


def expand_to_square(frames: np.ndarray, fill: tuple[int, int, int]) -> np.ndarray:
    """Pad uint8 [F, H, W, 3] to [F, S, S, 3], S = max(H, W), frames centred as NeMo's expand2square.

    The offset is (S - short) // 2 on the short axis, like PIL's paste in NeMo.
    """
    f, h, w, c = frames.shape
    if h == w:
        return frames
    side = max(h, w)
    out = np.empty((f, side, side, c), dtype=frames.dtype)
    out[...] = np.asarray(fill, dtype=frames.dtype)
    top, left = ((side - h) // 2, 0) if w > h else (0, (side - w) // 2)
    out[:, top:top + h, left:left + w] = frames
    return out


def keep_shortest_edge(height: int, width: int, image_size: int) -> int:
    """NeMo's 'keep' target: int(min(max_len / aspect, min_len)) with max_len = 2·image_size, min_len = image_size."""
    aspect = max(height, width) / min(height, width)
    return int(min(2 * image_size / aspect, image_size))


def preprocess_frames(frames: np.ndarray, settings: MediaSettings) -> np.ndarray:
    """uint8 RGB frames [F, H, W, 3] → float32 pixel_values [F, 3, h, w] for the vision tower.

    h = w = crop_size for 'square' and 'pad'; for 'keep' see the module docstring.

    Args:
        frames: decoded frames, all of one size.
        settings: image_size, crop_size, image_mean, image_std, image_aspect_ratio.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be uint8 [F>=1, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    proc = clip_processor(settings.image_size, settings.crop_size, tuple(settings.image_mean), tuple(settings.image_std))
    mode = settings.image_aspect_ratio
    kwargs = {}
    if mode == "pad":
        frames = expand_to_square(frames, fill_colour(settings.image_mean))
    elif mode == "keep":
        edge = keep_shortest_edge(frames.shape[1], frames.shape[2], settings.image_size)
        kwargs = {"do_center_crop": False, "size": {"shortest_edge": edge}}
    elif mode != "square":
        raise ValueError(f"image_aspect_ratio must be square, pad or keep, got {mode!r}")
    # channels_last stated explicitly: tiny frames (H in {1, 3}) would otherwise be guessed channels-first.
    out = proc(images=list(frames), return_tensors="np", input_data_format="channels_last", **kwargs)["pixel_values"]
    return np.ascontiguousarray(out, dtype=np.float32)  # [F, 3, h, w]
