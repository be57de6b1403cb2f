"""Vision features of a Video NeVA model: CLIP tower (penultimate layer, CLS dropped) → optional pooling → projector.

One definition serves the torch runtime, the ONNX/TensorRT export and training, so the
features are computed the same way everywhere.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration


def tokens_per_frame(image_size: int, patch_size: int, frame_token_pool: int = 1) -> int:
    """Media positions one frame takes in the prompt: (image_size // patch // pool)^2.

    224 px / 14 px patches → 16×16 = 256 (NeMo's image_token_len); pool 2 → 64; pool 4 → 16.
    """
    grid = image_size // patch_size
    if grid % frame_token_pool:
        raise ValueError(f"frame_token_pool={frame_token_pool} must divide the {grid}x{grid} patch grid")
    return (grid // frame_token_pool) ** 2


class VisionFeatures(torch.nn.Module):
    """pixel_values [F, 3, H, W] → features [F, T, D_llm] with T = tokens_per_frame(...).

    Frames are independent images (Video NeVA has no temporal embedding); a video's F·T rows
    stand where its `<video>` token was, in frame order.
    """

    def __init__(self, llava: LlavaForConditionalGeneration, frame_token_pool: int = 1):
        super().__init__()
        cfg = llava.config
        layer = cfg.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError(f"only a single vision_feature_layer is supported, got {layer!r}")
        self.tower = llava.model.vision_tower
        self.projector = llava.model.multi_modal_projector
        self.feature_layer = layer
        self.drop_cls = cfg.vision_feature_select_strategy == "default"
        self.pool = int(frame_token_pool)
        vc = cfg.vision_config
        self.tokens = tokens_per_frame(vc.image_size, vc.patch_size, self.pool)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.tower(pixel_values, output_hidden_states=True, return_dict=True)
        h = out.hidden_states[self.feature_layer]  # (F, 1 + S, Dv)
        if self.drop_cls:
            h = h[:, 1:]  # (F, S, Dv)
        if self.pool > 1:
            f, s, d = h.shape
            g = math.isqrt(s)
            grid = h.transpose(1, 2).reshape(f, d, g, g)  # (F, Dv, g, g)
            h = F.avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)  # (F, S/pool², Dv)
        return self.projector(h)  # (F, T, D_llm)
