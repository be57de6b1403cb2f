"""Torch backends: the vision encoder and the LLM of a transformers Llava model, on CPU or GPU."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerBase
from transformers.generation import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from videoneva.generation import SamplingSettings, StopStrings, split_end_strings
from videoneva.model.vision import VisionFeatures
from videoneva.runtime.base import GenerationOutput, TokenCallback

MEMO_SIZE = 64  # distinct end-string sets whose split into ids / texts is remembered per LLM


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


class DecodeLoopLanguageModel:
    """Batch-1 generation from ids + prompt table (fake ids ≥ vocab_size → prompt table rows).

    The token loop, logits processors and stop rules shared by the torch and ONNX Runtime LLMs; a
    subclass supplies `_prefill` and `_step`, which run the network. `media_token_id` is any
    in-vocabulary id that stands in for media positions in the ids the logits processors see
    (the repetition penalty reads them). `vocab_size` is the fake-id base: `fake_id_base` when
    given (an engine directory's, media.json), else the LLM's own vocabulary size.
    """

    def __init__(self, embed_tokens: torch.nn.Embedding, text_config, tokenizer: PreTrainedTokenizerBase,
                 media_token_id: int, fake_id_base: Optional[int] = None):
        self.embed_tokens, self.tokenizer = embed_tokens, tokenizer
        # media positions carry ids fake_id_base + k: the TensorRT-LLM engine's (maybe padded) vocabulary
        # when the model comes from an engine directory, so every backend reads the same ids
        self.vocab_size = int(fake_id_base if fake_id_base is not None else text_config.vocab_size)
        if self.vocab_size < text_config.vocab_size:
            raise ValueError(f"fake_id_base={self.vocab_size} is below the LLM's vocabulary ({text_config.vocab_size})")
        self.hidden_size = text_config.hidden_size
        self.max_context = int(text_config.max_position_embeddings)
        self.image_token_id = media_token_id
        w = embed_tokens.weight
        self.device, self.dtype = w.device, w.dtype
        self._end_split: dict[tuple[str, ...], tuple[list[int], list[str]]] = {}

    def _prefill(self, embeds: torch.Tensor):
        """(next-token logits [1, vocab] after embeds [1, L, D], state for _step)."""
        raise NotImplementedError

    def _step(self, embeds: torch.Tensor, state):
        """(next-token logits [1, vocab] after one more position embeds [1, 1, D], new state)."""
        raise NotImplementedError

    def embed(self, input_ids: list[int], prompt_table: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs_embeds [1, L, D], bookkeeping ids [1, L]: fake ids replaced by the image token id)."""
        ids = torch.tensor([input_ids], device=self.device)
        fake = ids >= self.vocab_size
        real = torch.where(fake, torch.full_like(ids, self.image_token_id), ids)
        embeds = self.embed_tokens(real)  # (1, L, D)
        if bool(fake.any()):
            if prompt_table is None:
                raise ValueError("input_ids hold media ids but no prompt table was given")
            rows = ids[fake] - self.vocab_size
            if int(rows.max()) >= prompt_table.shape[0]:
                raise ValueError(f"media id row {int(rows.max())} outside the prompt table ({prompt_table.shape[0]} rows)")
            embeds[fake] = prompt_table.to(self.device, self.dtype)[rows]
        return embeds, real

    def logits_processors(self, sampling: SamplingSettings, stop_ids: list[int], prompt_len: int) -> LogitsProcessorList:
        """transformers' own processors, in the order its generate() applies them."""
        procs = LogitsProcessorList()
        if sampling.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
        if sampling.min_tokens_to_generate > 0 and stop_ids:
            procs.append(MinNewTokensLengthLogitsProcessor(prompt_len, sampling.min_tokens_to_generate, stop_ids,
                                                           device=str(self.device)))
        if not sampling.greedy:
            if sampling.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k:
                procs.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p < 1.0:
                procs.append(TopPLogitsWarper(sampling.top_p))
        return procs

    def stop_strings(self, texts: list[str]) -> Optional[StopStrings]:
        """One request's matcher for the end strings that are not single tokens (None when there are none)."""
        return StopStrings(self.tokenizer, texts) if texts else None

    @torch.inference_mode()
    def generate(self, input_ids: list[int], prompt_table: Optional[torch.Tensor], sampling: SamplingSettings,
                 on_token: Optional[TokenCallback] = None) -> GenerationOutput:
        """One request, batch 1: a prefill, then one cached step per token.

        The same processors, token choice and stop rules as transformers' generate() (greedy and
        seeded samples are identical to it, tests/runtime/test_parity.py), without its per-call
        set-up, which costs more than this whole loop on a small model on CPU.
        """
        t0 = time.perf_counter()
        embeds, ids = self.embed(input_ids, prompt_table)
        ends = tuple(sampling.end_strings)
        if ends not in self._end_split:  # tokenizing the end strings costs more than a decode step here
            if len(self._end_split) >= MEMO_SIZE:  # requests choose their end strings: stay bounded
                self._end_split.clear()
            self._end_split[ends] = split_end_strings(self.tokenizer, list(ends))
        stop_ids, stop_texts = self._end_split[ends]
        procs = self.logits_processors(sampling, stop_ids, ids.shape[1])
        stop_text = self.stop_strings(stop_texts)
        if sampling.seed is not None and not sampling.greedy:
            torch.manual_seed(sampling.seed)
        new: list[int] = []
        raw: list[torch.Tensor] = []
        finish = "length"
        step = self._prefill(embeds) if sampling.tokens_to_generate else None
        while step is not None:
            logits, state = step
            logits = logits.float()  # (1, vocab)
            if sampling.all_probs:
                raw.append(logits[0])
            scores = logits
            for proc in procs:  # LogitsProcessorList's own call inspects signatures at every step
                scores = proc(ids, scores)
            nxt = torch.multinomial(scores.softmax(-1), 1)[:, 0] if not sampling.greedy else scores.argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], dim=-1)
            tid = int(nxt)
            new.append(tid)
            if on_token is not None:
                on_token(tid)
            if tid in stop_ids or (stop_text is not None and stop_text.add(tid)):
                finish = "stop"
                break
            if len(new) >= sampling.tokens_to_generate:
                break
            step = self._step(self.embed_tokens(nxt[:, None]), state)
        logprobs = None
        if sampling.all_probs:
            steps = torch.stack(raw).log_softmax(-1) if raw else torch.zeros(0, self.vocab_size, device=self.device)
            chosen = torch.tensor(new, dtype=torch.long, device=steps.device)
            logprobs = steps.gather(1, chosen[:, None])[:, 0].tolist()
        if new and new[-1] in stop_ids:
            new = new[:-1]
            logprobs = logprobs[: len(new)] if logprobs is not None else None
        return GenerationOutput(new, finish, logprobs, {"generate_s": time.perf_counter() - t0})


class TorchLanguageModel(DecodeLoopLanguageModel):
    """The decode loop on a transformers model, with its KV cache.

    `model` is a Llava model (its LLM is used) or a plain causal LM such as the LlamaForCausalLM
    stored in an engine directory.
    """

    def __init__(self, model, tokenizer: PreTrainedTokenizerBase, media_token_id: Optional[int] = None,
                 fake_id_base: Optional[int] = None):
        self.model = model
        super().__init__(model.get_input_embeddings(), getattr(model.config, "text_config", model.config), tokenizer,
                         media_token_id if media_token_id is not None else model.config.image_token_id, fake_id_base)

    def _prefill(self, embeds):
        out = self.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], out.cache

    def _step(self, embeds, state):
        out = self.model(inputs_embeds=embeds, cache=state, use_cache=True)
        return out.logits[:, -1], out.cache

    @torch.inference_mode()
    def logits(self, input_ids: list[int], prompt_table: Optional[torch.Tensor]) -> torch.Tensor:
        """Next-token logits at every position [L, vocab] (parity checks, scoring)."""
        embeds, _ = self.embed(input_ids, prompt_table)
        return self.model(inputs_embeds=embeds).logits[0]
