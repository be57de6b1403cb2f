"""Dense per-patch labels of `videoneva demo-data` scenes: what the demo's vision-tower pretraining learns.

The specs `videoneva demo-data` wrote to scenes.jsonl say where every shape is at any clip
fraction; the model sees the central min(W, H) square of a frame (CLIP resize + centre crop) cut
into G x G patches. For every frame the model samples, each patch gets whether a shape covers it,
that shape's kind and colour, its centre and size, and how much of the patch it covers.
videoneva/train/vision_pretrain.py trains the tower on them.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from videoneva.demo import vocab as V
from videoneva.demo.scenes import SceneSpec, draw_shape
from videoneva.errors import ConfigError
from videoneva.media.frames import select_frame_indices
from videoneva.media.settings import MediaSettings

EMPTY = 0.02          # a patch covered less than this by every shape is background
N_REG = 3             # centre x, centre y, side: fractions of the frame's centre square
MAX_SHAPES = 2        # demo scenes hold one or two shapes
N_SHAPES, N_COLORS = len(V.SHAPES), len(V.COLORS)


def frame_times(spec: SceneSpec, media: MediaSettings) -> list[float]:
    """Clip fraction t (0 … 1) of every frame the model samples from the scene, in order."""
    if spec.kind == "image" or media.media_type == "image":
        return [0.0]
    idx = select_frame_indices(spec.num_frames, media.num_frames, media.splice_single_frame)
    return [i / max(1, spec.num_frames - 1) for i in idx]


def patch_cover(spec: SceneSpec, t: float, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """How much of each patch every shape covers at clip fraction t, and the shapes' attributes.

    The model sees the frame's central min(W, H) square (CLIP resize + centre crop), cut into
    grid x grid patches; a patch's cover is the exact area fraction (box filter) of the shape's
    mask over it.

    Returns:
        cover: float32 [shapes, grid, grid] in 0 … 1.
        attrs: float32 [shapes, 2 + N_REG]: shape index (vocab.SHAPES), colour index at t
            (vocab.COLORS), centre x, centre y and side as fractions of the centre square.
    """
    m = min(spec.width, spec.height)
    x0, y0 = (spec.width - m) / 2.0, (spec.height - m) / 2.0
    colors = list(V.COLORS)
    cover, attrs = [], []
    for s in spec.shapes:
        cx, cy, side, color = s.state(t)
        mask = Image.new("L", (spec.width, spec.height), 0)
        draw_shape(ImageDraw.Draw(mask), s.shape, cx, cy, side, 255)
        box = (int(round(x0)), int(round(y0)), int(round(x0)) + m, int(round(y0)) + m)
        small = mask.crop(box).resize((grid, grid), Image.Resampling.BOX)
        cover.append(np.asarray(small, dtype=np.float32) / 255.0)
        attrs.append([V.SHAPES.index(s.shape), colors.index(color), (cx - x0) / m, (cy - y0) / m, side / m])
    return np.stack(cover), np.asarray(attrs, dtype=np.float32)


@dataclass
class FrameTargets:
    """Per-patch targets of a set of frames (N frames, G x G patches)."""

    objectness: torch.Tensor   # float [N, G, G]: 1 shape, 0 background, -1 ignored (a sliver of a shape)
    shape: torch.Tensor        # long [N, G, G]: vocab.SHAPES index of the covering shape, -100 elsewhere
    color: torch.Tensor        # long [N, G, G]: vocab.COLORS index, -100 elsewhere
    reg: torch.Tensor          # float [N, G, G, N_REG]: the covering shape's centre and side
    cover: torch.Tensor        # float [N, G, G]: the largest cover of the patch
    owner: torch.Tensor        # long [N, G, G]: which shape of the frame labels the patch, -1 none
    attrs: torch.Tensor        # float [N, MAX_SHAPES, 2 + N_REG], -1 rows for absent shapes

    def subset(self, ix: torch.Tensor) -> "FrameTargets":
        """The targets of frames ix."""
        return FrameTargets(*(getattr(self, f.name)[ix] for f in dataclasses.fields(self)))

    def to(self, device: torch.device) -> "FrameTargets":
        return FrameTargets(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def build_targets(covers: list[np.ndarray], attrs: list[np.ndarray], min_cover: float) -> FrameTargets:
    """Per-patch targets from patch_cover() results (one pair per frame)."""
    n, g = len(covers), covers[0].shape[-1]
    cov = np.zeros((n, MAX_SHAPES, g, g), np.float32)
    att = np.full((n, MAX_SHAPES, 2 + N_REG), -1.0, np.float32)
    for i, (c, a) in enumerate(zip(covers, attrs)):
        cov[i, : len(c)], att[i, : len(a)] = c, a
    cov_t, att_t = torch.from_numpy(cov), torch.from_numpy(att)
    best, own = cov_t.max(1)
    labelled = best >= min_cover
    owner = torch.where(labelled, own, torch.full_like(own, -1))
    picked = torch.gather(att_t, 1, own.flatten(1)[..., None].expand(-1, -1, att_t.shape[-1])).view(n, g, g, -1)
    objectness = torch.where(labelled, 1.0, torch.where(best <= EMPTY, 0.0, -1.0))
    shape = torch.where(labelled, picked[..., 0].long(), torch.full_like(own, -100))
    color = torch.where(labelled, picked[..., 1].long(), torch.full_like(own, -100))
    return FrameTargets(objectness, shape, color, picked[..., 2:], best, owner, att_t)


def read_scenes(path: str | Path) -> list[dict]:
    """scenes.jsonl lines ({"split", "media", …spec}); a line that is not a scene spec is named."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"vision_pretrain.scenes not found: {p} (the scenes.jsonl `videoneva demo-data` writes)")
    rows = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            SceneSpec.from_dict(rec)
            rec["media"], rec["split"]  # noqa: B018 - both keys are required
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{p}:{n}: not a demo-data scene spec ({type(exc).__name__}: {exc})") from None
        rows.append(rec)
    if not rows:
        raise ConfigError(f"{p}: no scenes")
    return rows


def scene_frames(rows: list[dict], pixels: Callable[[str, str], np.ndarray], media: MediaSettings, grid: int,
                 min_cover: float, desc: str, show: bool = True) -> tuple[torch.Tensor, FrameTargets]:
    """Every sampled frame of the scenes (float [N, 3, H, W], decoded by `pixels`) and its patch targets."""
    px, covers, attrs = [], [], []
    for rec in tqdm(rows, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False, disable=not show):
        spec = SceneSpec.from_dict(rec)
        values = pixels(spec.kind, rec["media"])
        times = frame_times(spec, media)
        if values.shape[0] != len(times):
            raise ConfigError(f"{rec['media']}: decoded {values.shape[0]} frames but its spec gives {len(times)} "
                              f"sampled frames; scenes.jsonl does not describe this media")
        for f, t in enumerate(times):
            c, a = patch_cover(spec, t, grid)
            px.append(torch.from_numpy(np.asarray(values[f], dtype=np.float32)))
            covers.append(c)
            attrs.append(a)
    return torch.stack(px), build_targets(covers, attrs, min_cover)


def check_settings(media: MediaSettings, grid: int, image_size: int) -> None:
    """The labels assume CLIP resize + centre crop of a square; refuse what they would get wrong."""
    if media.image_aspect_ratio != "square" or media.crop_size != image_size:
        raise ConfigError("vision_pretrain needs data.image_aspect_ratio=square (resize + centre crop): its patch "
                          f"labels follow that geometry, got image_aspect_ratio={media.image_aspect_ratio!r}")
    if grid < 2:
        raise ConfigError(f"vision_pretrain needs at least a 2x2 patch grid, got {grid}x{grid}")
