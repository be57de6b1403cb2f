"""Torch backends: the vision encoder and the LLM of a transformers Llava model, on CPU or GPU."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

from videoneva.generation import SamplingSettings, generation_config
from videoneva.model.vision import VisionFeatures
from videoneva.runtime.base import GenerationOutput, TokenCallback


class TorchVisionEncoder:
    """VisionFeatures of a Llava model: frames [F, 3, H, W] → [F, T, D_llm]."""

    def __init__(self, llava: LlavaForConditionalGeneration, frame_token_pool: int = 1):
        self.module = VisionFeatures(llava, frame_token_pool).eval()
        self.tokens_per_frame = self.module.tokens
        self.hidden_size = llava.config.text_config.hidden_size
        p = next(llava.parameters())
        self.device, self.dtype = p.device, p.dtype

    @torch.inference_mode()
    def encode(self, pixel_values: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(pixel_values, device=self.device, dtype=self.dtype)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"pixel_values must be [F, 3, H, W], got {tuple(x.shape)}")
        return self.module(x)


class _CallbackStreamer(BaseStreamer):
    """Calls on_token(id) for each generated id; generate() first puts the prompt, which is skipped."""

    def __init__(self, on_token: TokenCallback):
        self.on_token, self.prompt_seen = on_token, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for t in value.reshape(-1).tolist():
            self.on_token(int(t))

    def end(self) -> None:
        pass


class TorchLanguageModel:
    """An LLM driven with ids + prompt table (fake ids ≥ vocab_size → prompt table rows).

    `model` is a Llava model (its LLM is used) or a plain causal LM such as the LlamaForCausalLM
    stored in an engine directory; `media_token_id` is any in-vocabulary id that stands in for
    media positions in the ids the logits processors see (the repetition penalty reads them).
    """

    def __init__(self, model, tokenizer: PreTrainedTokenizerBase, media_token_id: Optional[int] = None):
        self.model, self.tokenizer = model, tokenizer
        tc = getattr(model.config, "text_config", model.config)
        self.vocab_size, self.hidden_size = tc.vocab_size, tc.hidden_size
        self.max_context = int(tc.max_position_embeddings)
        self.image_token_id = media_token_id if media_token_id is not None else model.config.image_token_id
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype

    def embed(self, input_ids: list[int], prompt_table: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs_embeds [1, L, D], bookkeeping ids [1, L]: fake ids replaced by the image token id)."""
        ids = torch.tensor([input_ids], device=self.device)
        fake = ids >= self.vocab_size
        real = torch.where(fake, torch.full_like(ids, self.image_token_id), ids)
        embeds = self.model.get_input_embeddings()(real)  # (1, L, D)
        if bool(fake.any()):
            if prompt_table is None:
                raise ValueError("input_ids hold media ids but no prompt table was given")
            rows = ids[fake] - self.vocab_size
            if int(rows.max()) >= prompt_table.shape[0]:
                raise ValueError(f"media id row {int(rows.max())} outside the prompt table ({prompt_table.shape[0]} rows)")
            embeds[fake] = prompt_table.to(self.device, self.dtype)[rows]
        return embeds, real

    @torch.inference_mode()
    def logits(self, input_ids: list[int], prompt_table: Optional[torch.Tensor]) -> torch.Tensor:
        """Next-token logits at every position [L, vocab] (parity checks, scoring)."""
        embeds, _ = self.embed(input_ids, prompt_table)
        return self.model(inputs_embeds=embeds).logits[0]

    @torch.inference_mode()
    def generate(self, input_ids: list[int], prompt_table: Optional[torch.Tensor], sampling: SamplingSettings,
                 on_token: Optional[TokenCallback] = None) -> GenerationOutput:
        t0 = time.perf_counter()
        embeds, real = self.embed(input_ids, prompt_table)
        gc = generation_config(sampling, self.tokenizer)
        gc.output_logits = sampling.all_probs
        if sampling.seed is not None and not sampling.greedy:
            torch.manual_seed(sampling.seed)
        out = self.model.generate(
            input_ids=real, inputs_embeds=embeds, attention_mask=torch.ones_like(real), generation_config=gc,
            tokenizer=self.tokenizer, streamer=_CallbackStreamer(on_token) if on_token else None,
        )
        new = out.sequences[0, real.shape[1]:].tolist()
        stop_ids = set(gc.eos_token_id or [])
        finish = "length"
        if new and new[-1] in stop_ids:
            new, finish = new[:-1], "stop"
        elif len(new) < sampling.tokens_to_generate:
            finish = "stop"  # a text end string stopped it
        logprobs = None
        if sampling.all_probs:
            steps = torch.stack(out.logits, dim=1)[0].float().log_softmax(-1)  # (steps, vocab)
            chosen = out.sequences[0, real.shape[1]:real.shape[1] + steps.shape[0]]
            logprobs = steps.gather(1, chosen[:, None])[:, 0].tolist()[: len(new)]
        return GenerationOutput(new, finish, logprobs, {"generate_s": time.perf_counter() - t0})
