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


def answers_right(model, vision: VisionFeatures, batch: dict) -> torch.Tensor:
    """Per record of the batch: True when every assistant token is the model's argmax (bool [B])."""
    logits = model(inputs_embeds=embed_batch(model, vision, batch), attention_mask=batch["attention_mask"]).logits
    pred = logits[:, :-1].argmax(-1)  # (B, L-1): the prediction for position t+1
    target = batch["labels"][:, 1:]
    scored = target != IGNORE_INDEX
    return ((pred == target) | ~scored).all(dim=1) & scored.any(dim=1)


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
            right += answers_right(model, vision, batch).tolist()
    finally:
        model.train(was_training)
    return right


@torch.no_grad()
def exact_match_parallel(fabric, step_module, ds, pad_id: int, batch_size: int = 16) -> list[bool]:
    """exact_match through the engine-wrapped TrainStep, the batches shared out to the processes.

    The batches are exact_match's (records [0, 16), [16, 32), …); batch b runs on process
    b mod world_size. Every process runs the same number of forward passes (a process with no
    batch left runs batch 0 again and drops it), as sharded models need; the per-record results
    are summed over the processes.
    """
    n, world, rank = len(ds), fabric.world_size, fabric.global_rank
    n_batches = -(-n // batch_size)
    right = torch.zeros(n, dtype=torch.int32, device=fabric.device)
    was_training = step_module.training
    step_module.eval()
    try:
        for i in range(-(-n_batches // world)):
            b = i * world + rank
            start = (b if b < n_batches else 0) * batch_size
            rows = range(start, min(start + batch_size, n))
            ok = step_module(fabric.to_device(collate([ds[j] for j in rows], pad_id)), score=True)
            if b < n_batches:
                right[start: start + len(rows)] = ok.to(torch.int32)
    finally:
        step_module.train(was_training)
    if world > 1:
        right = fabric.all_reduce(right, reduce_op="sum")
    return right.bool().tolist()
