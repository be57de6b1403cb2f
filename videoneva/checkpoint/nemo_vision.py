"""The vision side of a NeVA checkpoint: the HF CLIP tower, its image preprocessing and the projector.

NeMo (multimodal/models/multimodal_llm/neva/neva_model.py `create_vision_encoder_and_processor`,
multimodal/parts/utils.py `create_image_processor`) loads `mm_cfg.vision_encoder.from_pretrained` as an
HF CLIPVisionModel or SiglipVisionModel with its own CLIPImageProcessor / SiglipImageProcessor (mean,
std and crop size from the tower's preprocessor_config.json; `crop_size` in the config must match it),
and keeps `hidden_states[vision_select_layer]`, without CLS for `vision_select_feature: patch`. The
projector is an adapter on the word-embedding module (adapters/parallel_adapters.py).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Optional

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from videoneva.checkpoint import nemo_keys as K
from videoneva.checkpoint.nemo_archive import cfg_get as _get
from videoneva.errors import CheckpointError

log = logging.getLogger(__name__)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's published preprocessing
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_CLIP_TYPES = ("clip_vision_model", "clip")


def check_vision_keys(mm: dict, path: Path) -> None:
    """Refuse, by name, vision settings that change what the tower hands the projector."""
    if not _get(mm, "vision_encoder.from_hf", False):
        raise CheckpointError(f"{path}: mm_cfg.vision_encoder.from_hf is false (a NeMo MegatronCLIPModel tower); "
                              "only HF CLIPVisionModel towers are supported")
    select = _get(mm, "vision_encoder.vision_select_feature", "patch")
    if select != "patch":
        # NeMo's prompt holds (crop/patch)² positions per frame while cls_patch yields one more feature row
        # (the CLS token), so NeMo itself misplaces the features.
        raise CheckpointError(f"{path}: mm_cfg.vision_encoder.vision_select_feature={select!r} is not supported "
                              "(supported: 'patch'): it keeps the CLS row, one feature more than NeMo's prompt has "
                              "positions for")
    if _get(mm, "vision_encoder.class_token_length", 1) != 1:
        raise CheckpointError(f"{path}: mm_cfg.vision_encoder.class_token_length="
                              f"{_get(mm, 'vision_encoder.class_token_length')} (a CLIP tower has 1)")
    name = str(_get(mm, "vision_encoder.from_pretrained", ""))
    if "siglip" in name.lower() and not Path(name).is_dir():  # a hub name; a local tower's config.json decides
        raise CheckpointError(f"{path}: mm_cfg.vision_encoder.from_pretrained={name!r} is a SigLIP tower; only CLIP "
                              "towers are supported")


def _tower_config(local: Path) -> CLIPVisionConfig:
    try:
        raw = json.loads((local / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"vision tower {local}: cannot read config.json: {exc}") from None
    kind = raw.get("model_type")
    if kind not in _CLIP_TYPES:
        arch = (raw.get("architectures") or [kind])[0]
        raise CheckpointError(f"vision tower {local}: {arch} ({kind}) is not supported; supported: HF CLIP "
                              "(CLIPVisionModel, CLIPModel)")
    try:
        return CLIPVisionConfig.from_pretrained(local, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"vision tower {local}: cannot read a CLIP vision config: {exc}") from None


def image_settings(local: Optional[Path], config: CLIPVisionConfig, mm: dict, path: Path) -> dict:
    """image_mean / image_std from the tower's preprocessor_config.json, its crop checked against the model."""
    crop = _get(mm, "vision_encoder.crop_size")
    pre = local / "preprocessor_config.json" if local is not None else None
    if pre is None or not pre.is_file():
        log.warning("%s: the vision tower has no preprocessor_config.json; using OpenAI CLIP's mean/std", path)
        mean, std, tower_crop = CLIP_MEAN, CLIP_STD, config.image_size
    else:
        p = json.loads(pre.read_text())
        c = p.get("crop_size", config.image_size)
        tower_crop = (c.get("height"), c.get("width")) if isinstance(c, dict) else c
        tower_crop = tower_crop[0] if isinstance(tower_crop, (list, tuple)) and len(set(tower_crop)) == 1 else tower_crop
        mean, std = tuple(p.get("image_mean", CLIP_MEAN)), tuple(p.get("image_std", CLIP_STD))
    crops = {"the tower's image_size": config.image_size, "its preprocessor's crop_size": tower_crop}
    if crop is not None:
        crops["mm_cfg.vision_encoder.crop_size"] = crop[0] if len(set(crop)) == 1 else tuple(crop)
    if len({str(v) for v in crops.values()}) > 1:
        raise CheckpointError(f"{path}: square crops of one size are supported; got "
                              + ", ".join(f"{k} {v}" for k, v in crops.items()))
    return {"image_mean": [float(x) for x in mean], "image_std": [float(x) for x in std]}


def vision_tower(mm: dict, w: dict, vision_tower_dir, sd: dict, origin: dict, path: Path):
    """(CLIPVisionConfig, image settings): weights from the archive when present, else from a local HF CLIP dir."""
    check_vision_keys(mm, path)
    name = _get(mm, "vision_encoder.from_pretrained", "")
    local = (Path(vision_tower_dir) if vision_tower_dir is not None
             else (Path(name) if name and Path(name).is_dir() else None))
    if local is not None and not (local / "config.json").is_file():
        raise CheckpointError(f"vision tower {local}: not a HF CLIP directory (no config.json)")
    inside = {k[len(K.VISION_PREFIX):]: k for k in w if k.startswith(K.VISION_PREFIX)}
    if inside:
        if local is not None:
            config = _tower_config(local)
        elif name in K.KNOWN_VISION_TOWERS:
            config = CLIPVisionConfig(**K.KNOWN_VISION_TOWERS[name])
        else:
            raise CheckpointError(
                f"{path}: the archive holds the vision tower's weights but its config "
                f"(mm_cfg.vision_encoder.from_pretrained={name!r}) is not a local directory: pass vision_tower=PATH, "
                "a local HF CLIP directory (only its config.json and preprocessor_config.json are used)")
        for sub, key in inside.items():
            hf = K.HF_VISION_PREFIX + (sub[len("vision_model."):] if sub.startswith("vision_model.") else sub)
            sd[hf], origin[hf] = w[key], key
        return config, image_settings(local, config, mm, path)
    if local is None:
        raise CheckpointError(
            f"{path}: the vision tower is not in the archive (it was frozen in training) and "
            f"mm_cfg.vision_encoder.from_pretrained={name!r} is not a local directory (no hub downloads): "
            "pass vision_tower=PATH, a local HF CLIP directory")
    config = _tower_config(local)
    try:
        model = CLIPVisionModel.from_pretrained(local, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"vision tower {local}: cannot load a CLIPVisionModel: {exc}") from None
    for sub, t in model.state_dict().items():
        if re.search(r"\.position_ids$", sub):
            continue
        hf = K.HF_VISION_PREFIX + (sub[len("vision_model."):] if sub.startswith("vision_model.") else sub)
        sd[hf], origin[hf] = t, f"{local}:{sub}"
    return config, image_settings(local, config, mm, path)


def projector(adapter: str, w: dict, sd: dict, origin: dict, path: Path) -> None:
    if adapter not in K.PROJECTOR_KEYS:
        raise CheckpointError(f"{path}: mm_cfg.mm_mlp_adapter_type={adapter!r} is not supported; supported: "
                              f"{sorted(K.PROJECTOR_KEYS)} (transformers' Llava projector is Linear-act-Linear)")
    found = {k[len(K.PROJECTOR_PREFIX):] for k in w if k.startswith(K.PROJECTOR_PREFIX)}
    missing = sorted(set(K.PROJECTOR_KEYS[adapter]) - found)
    if missing:
        raise CheckpointError(f"{path}: no projector weights for mm_mlp_adapter_type={adapter!r}: missing "
                              f"{[K.PROJECTOR_PREFIX + m for m in missing]} (found {sorted(found)})")
    for sub, hf in K.PROJECTOR_KEYS[adapter].items():
        sd[hf], origin[hf] = w[K.PROJECTOR_PREFIX + sub], K.PROJECTOR_PREFIX + sub
    if adapter == "linear":  # exact: act = identity, linear_2 = I, bias 0
        out = sd["model.multi_modal_projector.linear_1.weight"]
        n = out.shape[0]
        sd["model.multi_modal_projector.linear_2.weight"] = torch.eye(n, dtype=out.dtype)
        sd["model.multi_modal_projector.linear_2.bias"] = torch.zeros(n, dtype=out.dtype)
        origin["model.multi_modal_projector.linear_2.weight"] = "(identity for 'linear')"
        origin["model.multi_modal_projector.linear_2.bias"] = "(zero for 'linear')"
