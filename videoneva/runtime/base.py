"""Backend interfaces: a VisionEncoder (frames → features) and a LanguageModel (ids + prompt table → tokens).

Both LLM backends take the TensorRT-LLM multimodal convention: media positions carry fake ids
`vocab_size + k` and row k of the prompt table is their embedding. The torch backend maps this
to `inputs_embeds`; TensorRT-LLM takes it natively (`prompt_embedding_table`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np
import torch

from videoneva.generation import SamplingSettings

TokenCallback = Callable[[int], None]


@dataclass
class GenerationOutput:
    token_ids: list[int]                       # generated ids (end-of-sequence id excluded)
    finish_reason: str                         # "stop" (eos / end string) | "length"
    logprobs: Optional[list[float]] = None     # log p(token) under the model, one per token id
    timings: dict = field(default_factory=dict)


class VisionEncoder(Protocol):
    tokens_per_frame: int
    hidden_size: int

    def encode(self, pixel_values: np.ndarray) -> torch.Tensor:
        """pixel_values float32 [F, 3, H, W] → features [F, T, D_llm] (numpy, or torch in the LLM's dtype)."""


class LanguageModel(Protocol):
    vocab_size: int
    hidden_size: int
    max_context: int
    image_token_id: int   # an in-vocabulary id standing in for media rows where ids must be real

    def generate(self, input_ids: list[int], prompt_table: Optional[torch.Tensor], sampling: SamplingSettings,
                 on_token: Optional[TokenCallback] = None) -> GenerationOutput:
        """Generate from ids where ids ≥ vocab_size index rows of prompt_table [N, D]."""


def fake_media_ids(input_ids: list[int], media_positions: list[int], vocab_size: int) -> list[int]:
    """Replace the media positions (in order) by vocab_size, vocab_size+1, … (TensorRT-LLM convention)."""
    out = list(input_ids)
    for k, pos in enumerate(media_positions):
        out[pos] = vocab_size + k
    return out
