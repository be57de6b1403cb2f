"""Validation during training: teacher-forced exact match on held-out conversation records.

An answer counts as right when, fed the reference prefix, the model's argmax is the reference
token at every position that carries loss (the answer and its end separator). That is exactly
what greedy decoding would produce, so this equals greedy exact match on the assistant turns, at
the cost of one forward pass per batch instead of one per generated token.
"""
from __future__ import annotations

import torch

from videoneva.model.vision import VisionFeatures
from videoneva.train.data import IGNORE_INDEX, collate


def embed_batch(model, vision: VisionFeatures, batch: dict) -> torch.Tensor:
    """Token embeddings with the media rows scattered where the image tokens stand: (B, L, D)."""
    ids = batch["input_ids"]
    embeds = model.get_input_embeddings()(ids)  # (B, L, D)
    if batch["pixel_values"] is None:
        return embeds
    feats = vision(batch["pixel_values"].to(embeds.dtype))  # (ΣF, T, D)
    mask = ids == model.config.image_token_id
    if int(mask.sum()) != feats.shape[0] * feats.shape[1]:
        raise ValueError(f"{int(mask.sum())} media positions but {feats.shape[0] * feats.shape[1]} feature rows")
    return embeds.masked_scatter(mask[..., None], feats.reshape(-1, feats.shape[-1]).to(embeds.dtype))


@torch.no_grad()
def exact_match(model, vision: VisionFeatures, ds, pad_id: int, batch_size: int = 16) -> list[bool]:
    """Per record of ds: True when every assistant token is the model's argmax (teacher-forced).

    Args:
        model: the Llava model (not a peft wrapper's outer module: its base).
        vision: the VisionFeatures over the same model.
        ds: a ConversationDataset of the held-out records.
        pad_id: the tokenizer's pad id.
        batch_size: records per forward pass.
    """
    was_training = model.training
    model.eval()
    right: list[bool] = []
    try:
        for start in range(0, len(ds), batch_size):
            batch = collate([ds[i] for i in range(start, min(start + batch_size, len(ds)))], pad_id)
            logits = model(inputs_embeds=embed_batch(model, vision, batch), attention_mask=batch["attention_mask"]).logits
            pred = logits[:, :-1].argmax(-1)  # (B, L-1): the prediction for position t+1
            target = batch["labels"][:, 1:]
            scored = target != IGNORE_INDEX
            ok = ((pred == target) | ~scored).all(dim=1) & scored.any(dim=1)
            right += ok.tolist()
    finally:
        model.train(was_training)
    return right
