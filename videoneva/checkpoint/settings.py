"""CheckpointSettings: what a checkpoint needs beyond its transformers config (`videoneva.json`).

Kept free of torch and transformers: engine directories carry these settings too, and the Triton
models that only read them should not import a deep-learning stack.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from videoneva.errors import CheckpointError
from videoneva.media.settings import CLIP_MEAN, CLIP_STD

SETTINGS_FILE = "videoneva.json"
FORMAT_VERSION = 1


@dataclass
class CheckpointSettings:
    """What a checkpoint needs beyond the transformers config: media sampling and the template."""

    format_version: int = FORMAT_VERSION
    conv_template: str = "nv_steerlm"
    media_type: str = "video"
    num_frames: int = 8
    splice_single_frame: Optional[str] = None
    image_aspect_ratio: str = "square"
    frame_token_pool: int = 1
    image_mean: tuple = CLIP_MEAN
    image_std: tuple = CLIP_STD
    model_id: str = "videoneva"
    insert_media_token: Optional[str] = None  # left | right: where training put the media token; servers place
    source: dict = field(default_factory=dict)  # media there when a question has none (null: left)

    @classmethod
    def from_dict(cls, data: dict) -> "CheckpointSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"{SETTINGS_FILE}: unknown keys {unknown}; known: {sorted(known)}")
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise CheckpointError(
                f"{SETTINGS_FILE} has format_version {data['format_version']}; this videoneva reads "
                f"up to {FORMAT_VERSION}: upgrade videoneva")
        out = cls(**data)
        out.image_mean, out.image_std = tuple(out.image_mean), tuple(out.image_std)
        return out
