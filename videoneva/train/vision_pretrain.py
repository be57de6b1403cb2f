"""Dense pretraining of a new model's vision tower on demo-data scenes (`vision_pretrain.*` keys of `videoneva train`).

A real Video NeVA starts from a pretrained CLIP tower. The demo trains its own from scratch, and a
ViT this small does not learn shapes from the question-answer loss alone within the CPU budget
(docs/demo-model.md). This is the demo's stand-in for CLIP's pretraining: before the finetune, the
tower alone learns, on every patch of a frame and from the very layer the projector reads, whether
a shape covers the patch, that shape's kind and colour, its centre and size, and how much of the
patch it covers (labels: videoneva/demo/scene_labels.py). The frames go through the same decode and
preprocessing as training and inference. The prediction heads are dropped afterwards; the
checkpoint keeps the standard CLIP tower, so export and serving are unchanged.

It runs on the plain tower before the engine wraps the model, under every strategy: with several
processes each takes its slice of every step's frames and the gradients are averaged over the
processes (the tower is small and replicated), so all processes keep the same tower.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from videoneva.config import _help
from videoneva.demo.scene_labels import (MAX_SHAPES, N_COLORS, N_REG, N_SHAPES, FrameTargets, check_settings,
                                         read_scenes, scene_frames)
from videoneva.errors import ConfigError
from videoneva.media.settings import MediaSettings

log = logging.getLogger(__name__)


@dataclass
class VisionPretrainConfig:
    scenes: Optional[str] = _help("demo-data scenes.jsonl: first pretrain a new model's vision tower on dense "
                                  "per-patch labels of its train-split scenes (null: no tower pretraining)",
                                  default=None)
    steps: int = _help("tower pretraining steps", default=1000)
    batch_size: int = _help("frames per tower pretraining step (split over the processes)", default=64)
    lr: float = _help("peak learning rate of the tower pretraining (AdamW; linear warm-up, cosine to 10%)",
                      default=2e-3)
    warmup_steps: int = _help("tower pretraining warm-up steps", default=50)
    min_cover: float = _help("a patch is labelled with a shape covering at least this fraction of it",
                             default=0.15)
    eval_scenes: int = _help("held-out-split scenes scored after the tower pretraining", default=200)


class DenseHeads(torch.nn.Module):
    """Linear per-patch heads: objectness, shape, colour, centre + side, cover (dropped after pretraining)."""

    def __init__(self, width: int):
        super().__init__()
        self.n_shape, self.n_color = N_SHAPES, N_COLORS
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
    device = next(tower.parameters()).device
    for b in range(0, px.shape[0], batch):
        out = {k: v.cpu() for k, v in heads(patch_features(tower, px[b: b + batch].to(device), feature_layer)).items()}
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


def check_split(cfg: VisionPretrainConfig, world_size: int) -> None:
    """Every process takes an equal slice of each step's frames."""
    if cfg.batch_size % world_size:
        raise ConfigError(f"vision_pretrain.batch_size={cfg.batch_size} must be a multiple of the {world_size} "
                          "training processes (each takes an equal slice of every step's frames)")


def _average_grads(fabric, params: list[torch.Tensor]) -> None:
    """Mean of every gradient over the processes, in one collective."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = fabric.all_reduce(torch.cat([g.reshape(-1) for g in grads]), reduce_op="mean")
    at = 0
    for g in grads:
        g.copy_(flat[at: at + g.numel()].view_as(g))
        at += g.numel()


def pretrain_tower(tower, feature_layer: int, cfg: VisionPretrainConfig, media: MediaSettings,
                   pixels: Callable[[str, str], np.ndarray], lr_lambda: Callable[[int], float], seed: int,
                   fabric=None, autocast: bool = False) -> dict:
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
        fabric: the run's Lightning Fabric (device, processes); None: one process on the tower's device.
        autocast: run the forward passes under the Fabric's mixed-precision autocast.
    """
    world, rank = (fabric.world_size, fabric.global_rank) if fabric is not None else (1, 0)
    check_split(cfg, world)
    main = rank == 0
    vc = tower.config
    grid = vc.image_size // vc.patch_size
    check_settings(media, grid, vc.image_size)
    rows = read_scenes(cfg.scenes)
    train_rows = [r for r in rows if r["split"] == "train"]
    held_rows = [r for r in rows if r["split"] != "train"][: cfg.eval_scenes]
    if not train_rows:
        raise ConfigError(f"{cfg.scenes}: no train-split scenes")
    t0 = time.perf_counter()
    px, targets = scene_frames(train_rows, pixels, media, grid, cfg.min_cover, "vision_pretrain: frames", main)
    device = next(tower.parameters()).device if fabric is None else fabric.device
    torch.manual_seed(seed)
    tower.to(device)
    heads = DenseHeads(vc.hidden_size).to(device=device, dtype=next(tower.parameters()).dtype)
    tower.train()
    params = [p for p in tower.parameters()] + list(heads.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    gen = torch.Generator().manual_seed(seed)
    share = cfg.batch_size // world
    mixed = fabric.autocast if (fabric is not None and autocast) else contextlib.nullcontext
    losses = []
    bar = tqdm(range(cfg.steps), desc="train[vision_pretrain]", file=sys.stderr, dynamic_ncols=True, disable=not main)
    for _ in bar:
        ix = torch.randint(px.shape[0], (cfg.batch_size,), generator=gen)[rank * share: (rank + 1) * share]
        with mixed():
            loss = dense_loss(heads(patch_features(tower, px[ix].to(device), feature_layer)),
                              targets.subset(ix).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            _average_grads(fabric, params)
            loss = fabric.all_reduce(loss.detach(), reduce_op="mean")
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
    if held_rows and main:
        hpx, ht = scene_frames(held_rows, pixels, media, grid, cfg.min_cover, "vision_pretrain: held-out frames")
        with mixed():
            report["heldout"] = score_objects(tower, heads, feature_layer, hpx, ht)
        log.info("vision_pretrain held-out: %s", report["heldout"])
    report["seconds"] = time.perf_counter() - t0
    return report
