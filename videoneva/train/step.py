"""The training forward pass as one module, so the engine's wrapper (DDP, FSDP) sees every call."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from videoneva.model.vision import VisionFeatures
from videoneva.train.data import IGNORE_INDEX
from videoneva.train.evaluate import answers_right, embed_batch


def attention_inputs(batch: dict, dtype: torch.dtype) -> dict:
    """The LLM's attention kwargs for a collated batch: the 2D padding mask, or with isolated turns
    the 4D additive turn mask (eager and sdpa alike) and the restarted position ids."""
    if batch.get("turn_mask") is None:
        return {"attention_mask": batch["attention_mask"]}
    allowed = batch["turn_mask"]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return {"attention_mask": mask, "position_ids": batch["position_ids"]}


def forward_loss(model, vision: VisionFeatures, batch: dict) -> torch.Tensor:
    """Cross-entropy on assistant tokens, media rows scattered where the image tokens stand.

    The same mean next-token loss as the model's own `labels=` path, but the LM head runs on the
    positions that predict an assistant token only (a fraction of the sequence: the media and the
    questions carry no loss), which saves its matmul and softmax everywhere else.
    """
    embeds = embed_batch(model, vision, batch)
    hidden = model.model(inputs_embeds=embeds, use_cache=False,
                         **attention_inputs(batch, embeds.dtype)).last_hidden_state  # (B, L, D)
    target = batch["labels"][:, 1:]
    scored = target != IGNORE_INDEX  # position t predicts token t+1
    logits = model.lm_head(hidden[:, :-1][scored])  # (N, V)
    return F.cross_entropy(logits.float(), target[scored])


class TrainStep(torch.nn.Module):
    """`forward(batch)` → the loss; `forward(batch, score=True)` → per record, whether greedy decoding
    would give every answer (videoneva/train/evaluate.py).

    Args:
        model: what trains: the Llava model, or the peft wrapper around it with LoRA.
        base: the Llava model itself (model, or the model inside the peft wrapper).
        frame_token_pool: the checkpoint's frame token pooling.

    `model` is the only registered child, so the state dict is the model's under "model.";
    `base` and the vision features reach the same modules.
    """

    def __init__(self, model: torch.nn.Module, base: torch.nn.Module, frame_token_pool: int):
        super().__init__()
        self.model = model
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "vision", VisionFeatures(base, frame_token_pool))

    def forward(self, batch: dict, score: bool = False) -> torch.Tensor:
        if score:
            return answers_right(self.base, self.vision, batch)
        return forward_loss(self.base, self.vision, batch)
