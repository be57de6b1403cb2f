"""Dense pretraining of a new demo model's vision tower on demo-data scenes (`vision_pretrain.*` keys of `videoneva train`).

A real Video NeVA starts from a pretrained CLIP tower. The demo trains its own from scratch, and a
ViT this small does not learn shapes from the question-answer loss alone within the CPU budget
(README, "The demo model"). This is the demo's stand-in for CLIP's pretraining: before the
finetune, the tower alone learns, on every patch of a frame and from the very layer the projector
reads, whether a shape covers the patch, that shape's kind and colour, its centre and size, and how
much of the patch it covers. The labels come from the specs `videoneva demo-data` wrote to
scenes.jsonl, at the clip fractions of the frames the model samples; the frames go through the same
decode and preprocessing as training and inference. The prediction heads are dropped afterwards;
the checkpoint keeps the standard CLIP tower, so export and serving are unchanged.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

from videoneva.config import _help
from videoneva.demo import vocab as V
from videoneva.demo.scenes import SceneSpec, draw_shape
from videoneva.errors import ConfigError
from videoneva.media.frames import select_frame_indices
from videoneva.media.settings import MediaSettings

log = logging.getLogger(__name__)

EMPTY = 0.02          # a patch covered less than this by every shape is background
N_REG = 3             # centre x, centre y, side: fractions of the frame's centre square
MAX_SHAPES = 2        # demo scenes hold one or two shapes


@dataclass
class VisionPretrainConfig:
    scenes: Optional[str] = _help("demo-data scenes.jsonl: first pretrain a new model's vision tower on dense "
                                  "per-patch labels of its train-split scenes (null: no tower pretraining)",
                                  default=None)
    steps: int = _help("tower pretraining steps", default=1000)
    batch_size: int = _help("frames per tower pretraining step", default=64)
    lr: float = _help("peak learning rate of the tower pretraining (AdamW; linear warm-up, cosine to 10%)",
                      default=2e-3)
    warmup_steps: int = _help("tower pretraining warm-up steps", default=50)
    min_cover: float = _help("a patch is labelled with a shape covering at least this fraction of it",
                             default=0.15)
    eval_scenes: int = _help("held-out-split scenes scored after the tower pretraining", default=200)


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


def _subset(t: FrameTargets, ix: torch.Tensor) -> FrameTargets:
    return FrameTargets(*(getattr(t, f)[ix] for f in FrameTargets.__dataclass_fields__))


class DenseHeads(torch.nn.Module):
    """Linear per-patch heads: objectness, shape, colour, centre + side, cover (dropped after pretraining)."""

    def __init__(self, width: int):
        super().__init__()
        self.n_shape, self.n_color = len(V.SHAPES), len(V.COLORS)
        self.proj = torch.nn.Linear(width, 1 + self.n_shape + self.n_color + N_REG + 1)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        o = self.proj(h.to(self.proj.weight.dtype)).float()
        a, b = 1 + self.n_shape, 1 + self.n_shape + self.n_color
        return {"objectness": o[..., 0], "shape": o[..., 1:a], "color": o[..., a:b], "reg": o[..., b: b + N_REG],
                "cover": o[..., b + N_REG]}


def dense_loss(out: dict[str, torch.Tensor], t: FrameTargets) -> torch.Tensor:
    """Sum of the per-patch losses (shape weighted twice: it is the hard one)."""
    seen = t.objectness >= 0
    loss = F.binary_cross_entropy_with_logits(out["objectness"][seen], t.objectness[seen])
    on = t.shape >= 0
    if bool(on.any()):
        loss = loss + 2.0 * F.cross_entropy(out["shape"][on], t.shape[on]) + F.cross_entropy(out["color"][on], t.color[on])
        loss = loss + 10.0 * F.smooth_l1_loss(out["reg"][on], t.reg[on], beta=0.05)
    return loss + 10.0 * F.smooth_l1_loss(torch.sigmoid(out["cover"]), t.cover, beta=0.05)


def patch_features(tower, pixel_values: torch.Tensor, feature_layer: int) -> torch.Tensor:
    """[N, 3, H, W] → [N, G, G, D]: the layer the projector reads, CLS dropped, as a patch grid."""
    dtype = next(tower.parameters()).dtype
    h = tower(pixel_values.to(dtype), output_hidden_states=True, return_dict=True).hidden_states[feature_layer][:, 1:]
    g = int(round(h.shape[1] ** 0.5))
    return h.reshape(h.shape[0], g, g, h.shape[-1])


@torch.no_grad()
def score_objects(tower, heads: DenseHeads, feature_layer: int, px: torch.Tensor, t: FrameTargets,
                  batch: int = 128) -> dict:
    """Object-level accuracy: each shape's kind and colour from its patches' mean logits, centre/side error in patches."""
    ok_shape = ok_color = n = 0
    err = torch.zeros(N_REG)
    for b in range(0, px.shape[0], batch):
        out = heads(patch_features(tower, px[b: b + batch], feature_layer))
        for j in range(out["shape"].shape[0]):
            i = b + j
            for k in range(MAX_SHAPES):
                mask = t.owner[i] == k
                if t.attrs[i, k, 0] < 0 or not bool(mask.any()):
                    continue
                ok_shape += int(out["shape"][j][mask].mean(0).argmax()) == int(t.attrs[i, k, 0])
                ok_color += int(out["color"][j][mask].mean(0).argmax()) == int(t.attrs[i, k, 1])
                err += (out["reg"][j][mask].mean(0) - t.attrs[i, k, 2:]).abs()
                n += 1
    g = t.owner.shape[-1]
    mean = (err / max(1, n) * g).tolist()  # in patches
    return {"objects": n, "shape_accuracy": ok_shape / max(1, n), "color_accuracy": ok_color / max(1, n),
            "center_x_error_patches": mean[0], "center_y_error_patches": mean[1], "side_error_patches": mean[2]}


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


def _frames(rows: list[dict], pixels: Callable[[str, str], np.ndarray], media: MediaSettings, grid: int,
            min_cover: float, desc: str) -> tuple[torch.Tensor, FrameTargets]:
    px, covers, attrs = [], [], []
    for rec in tqdm(rows, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False):
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


def pretrain_tower(tower, feature_layer: int, cfg: VisionPretrainConfig, media: MediaSettings,
                   pixels: Callable[[str, str], np.ndarray], lr_lambda: Callable[[int], float], seed: int) -> dict:
    """Train `tower` (a CLIPVisionModel, in place) on dense labels of cfg.scenes; returns the metrics.

    Args:
        tower: the new model's vision tower.
        feature_layer: the hidden-state index the projector reads (Llava's vision_feature_layer).
        cfg: the vision_pretrain keys.
        media: the model's media settings (frames sampled and preprocessed as in training).
        pixels: (media_type, relative path) → float [F, 3, H, W]; the training set's cached loader,
            so the finetune that follows decodes nothing again.
        lr_lambda: step → lr factor.
        seed: data order and head initialisation.
    """
    vc = tower.config
    grid = vc.image_size // vc.patch_size
    check_settings(media, grid, vc.image_size)
    rows = read_scenes(cfg.scenes)
    train_rows = [r for r in rows if r["split"] == "train"]
    held_rows = [r for r in rows if r["split"] != "train"][: cfg.eval_scenes]
    if not train_rows:
        raise ConfigError(f"{cfg.scenes}: no train-split scenes")
    t0 = time.perf_counter()
    px, targets = _frames(train_rows, pixels, media, grid, cfg.min_cover, "vision_pretrain: frames")
    torch.manual_seed(seed)
    heads = DenseHeads(vc.hidden_size).to(next(tower.parameters()).dtype)
    tower.train()
    params = [p for p in tower.parameters()] + list(heads.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    bar = tqdm(range(cfg.steps), desc="train[vision_pretrain]", file=sys.stderr, dynamic_ncols=True)
    for _ in bar:
        ix = torch.randint(px.shape[0], (cfg.batch_size,), generator=gen)
        loss = dense_loss(heads(patch_features(tower, px[ix], feature_layer)), _subset(targets, ix))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    tower.eval()
    report = {"scenes": str(cfg.scenes), "train_frames": int(px.shape[0]), "steps": cfg.steps,
              "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
              "losses": losses}
    if held_rows:
        hpx, ht = _frames(held_rows, pixels, media, grid, cfg.min_cover, "vision_pretrain: held-out frames")
        report["heldout"] = score_objects(tower, heads, feature_layer, hpx, ht)
        log.info("vision_pretrain held-out: %s", report["heldout"])
    report["seconds"] = time.perf_counter() - t0
    return report
