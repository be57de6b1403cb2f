"""Training data: LLaVA conversation json + media → (input_ids, labels, pixel_values), same preprocessing as inference."""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from videoneva import prompts
from videoneva.errors import ConfigError, VideoNevaError
from videoneva.media import load_media
from videoneva.media.settings import MediaSettings
from videoneva.media.sources import MediaRoot

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


@dataclass
class Example:
    input_ids: list[int]           # image token id at media positions (F·T copies)
    labels: list[int]              # IGNORE_INDEX outside assistant turns
    pixel_values: Optional[np.ndarray]  # [F, 3, H, W] float32 or None for text-only
    segments: Optional[list[int]] = None   # turn_segments(): 0 shared prefix, k the k-th answer's turn
    positions: Optional[list[int]] = None  # position ids with every turn placed right after the prefix


def turn_segments(input_ids: list[int], labels: list[int], image_token_id: int) -> tuple[list[int], list[int]]:
    """Split a multi-turn example into a shared prefix and one segment per answered turn.

    The prefix runs to the last media position (to the first answer without media): the system
    prompt, the first question and the media. Segment k (k >= 1) runs from there, or from the end
    of answer k-1, to the end of answer k. Position ids restart after the prefix in every segment,
    so each turn sits where a single-question prompt's answer would.

    Returns:
        (segments, positions), one entry per token.
    """
    media = [i for i, t in enumerate(input_ids) if t == image_token_id]
    answered = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    end = media[-1] if media else (answered[0] - 1 if answered else len(input_ids) - 1)
    segments: list[int] = []
    positions: list[int] = []
    seg, start, prev = 1, end + 1, False
    for i, lab in enumerate(labels):
        if i <= end:
            segments.append(0)
            positions.append(i)
            continue
        if prev and lab == IGNORE_INDEX:
            seg, start = seg + 1, i
        segments.append(seg)
        positions.append(end + 1 + i - start)
        prev = lab != IGNORE_INDEX
    return segments, positions


def load_conversations(path: str | Path) -> list[dict]:
    """LLaVA conversation json: [{"id", "video"|"image", "conversations": [{"from", "value"}, …]}, …]."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data.data_path not found: {p}")
    try:
        records = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(records, list):
        raise ConfigError(f"{p}: expected a JSON list of conversation records")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("conversations"), list) or not r["conversations"]:
            raise ConfigError(f"{p}: record {i} has no 'conversations' list")
    return records


class ConversationDataset(torch.utils.data.Dataset):
    """Renders each record with the template, masks labels to assistant turns, loads its media.

    Decoded + preprocessed media can be kept in memory (cache_media) so later epochs skip decode;
    the cache holds float16 pixel values keyed by media path, to stay small.
    """

    def __init__(self, records: list[dict], tokenizer, template: str, media: MediaSettings,
                 media_root: MediaRoot, tokens_per_frame: int, cache_media: bool = True):
        self.records, self.tok, self.template = records, tokenizer, template
        self.media, self.root, self.tpf = media, media_root, tokens_per_frame
        self.image_token_id = tokenizer.convert_tokens_to_ids(prompts.MEDIA_TOKENS["image"])
        self.cache: Optional[dict[str, np.ndarray]] = {} if cache_media else None

    def __len__(self) -> int:
        return len(self.records)

    def pixels(self, media_type: str, rel: str) -> np.ndarray:
        """Preprocessed frames of one media file ([F, 3, H, W]; float16 when cached), decoded once when cached."""
        key = f"{media_type}:{rel}"  # several questions usually share one video: decode it once
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        sample = load_media(self.root, rel, dataclasses.replace(self.media, media_type=media_type))
        px = sample.pixel_values.astype(np.float16) if self.cache is not None else sample.pixel_values
        if self.cache is not None:
            self.cache[key] = px
        return px

    def __getitem__(self, idx: int) -> Example:
        rec = self.records[idx]
        media_type = "video" if rec.get("video") else ("image" if rec.get("image") else None)
        pixels = None
        if media_type is not None:
            pixels = self.pixels(media_type, rec[media_type]).astype(np.float32)
        text, spans = prompts.render_conversation(self.template, rec["conversations"], media_type)
        n_media = 0 if pixels is None else pixels.shape[0] * self.tpf
        tp = prompts.tokenize_with_media(self.tok, text, n_media, self.image_token_id, add_bos=False, spans=spans)
        segments, positions = turn_segments(tp.input_ids, tp.labels, self.image_token_id)
        return Example(tp.input_ids, tp.labels, pixels, segments, positions)


def collate(examples: list[Example], pad_id: int, isolate_turns: bool = False) -> dict:
    """Right-pad ids/labels; concatenate all frames (each example's frames in order).

    isolate_turns adds "turn_mask" (bool [B, 1, L, L], True = may attend) and "position_ids": a
    token sees the shared prefix (system prompt, first question, media) and the earlier tokens of
    its own turn only, never an earlier answer, so every turn trains like a single-question
    prompt while the media is encoded once per record.
    """
    n = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
    frames = [torch.from_numpy(e.pixel_values) for e in examples if e.pixel_values is not None]
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask,
             "pixel_values": torch.cat(frames) if frames else None}
    if isolate_turns:
        seg = torch.full((len(examples), n), -1, dtype=torch.long)
        pos = torch.zeros((len(examples), n), dtype=torch.long)
        for i, e in enumerate(examples):
            if e.segments is None or e.positions is None:
                raise ValueError("isolate_turns needs examples with segments (ConversationDataset gives them)")
            seg[i, : len(e.segments)] = torch.tensor(e.segments)
            pos[i, : len(e.positions)] = torch.tensor(e.positions)
        q, k = seg[:, :, None], seg[:, None, :]
        causal = torch.ones((n, n), dtype=torch.bool).tril()
        allowed = causal & (k >= 0) & ((k == 0) | (k == q))
        allowed |= torch.eye(n, dtype=torch.bool)  # a padding row attends to itself (no empty softmax row)
        batch["turn_mask"], batch["position_ids"] = allowed[:, None], pos
    return batch


def check_example(ex: Example, where: str) -> None:
    if all(lab == IGNORE_INDEX for lab in ex.labels):
        raise VideoNevaError(f"{where}: no assistant tokens carry loss (empty answer or truncated?)")
