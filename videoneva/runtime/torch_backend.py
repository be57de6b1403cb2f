"""Torch backends: the vision encoder and the LLM of a transformers Llava model, on CPU or GPU."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, CacheLayerMixin
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
from videoneva.runtime.decode import KVBatch, Sequence, mask_padded_vocab  # noqa: F401  (re-exported)

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
    """Generation from ids + prompt table (fake ids ≥ vocab_size → prompt table rows), one or many at once.

    The token loop, logits processors and stop rules shared by the torch and ONNX Runtime LLMs
    (runtime/decode.py: a Sequence per request); a subclass supplies `_prefill` (one prompt) and
    `_step` (one more position for every row of a KVBatch), which run the network. The in-flight
    batcher (runtime/batching.py) steps many Sequences together through the same two calls.
    `media_token_id` is any in-vocabulary id that stands in for media positions in the ids the
    logits processors see (the repetition penalty reads them).
    `vocab_size` is the fake-id base: `fake_id_base` when given (an engine directory's, media.json),
    else the LLM's own vocabulary size.
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
        self.vocab_limit = min(self.vocab_size, len(tokenizer))  # ids past the tokenizer: see mask_padded_vocab
        w = embed_tokens.weight
        self.device, self.dtype = w.device, w.dtype
        self._end_split: dict[tuple[str, ...], tuple[list[int], list[str]]] = {}

    def _prefill(self, embeds: torch.Tensor) -> tuple[torch.Tensor, KVBatch]:
        """(next-token logits [1, vocab] after embeds [1, L, D], the prompt's cache as a one-row KVBatch)."""
        raise NotImplementedError

    def _step(self, embeds: torch.Tensor, batch: KVBatch) -> torch.Tensor:
        """Next-token logits [B, vocab] after more positions per row (embeds [B, S, D]); appends them to batch.
        S = 1 for a decode step; S > 1 continues one row's prompt after a cached prefix."""
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
        if sampling.min_tokens > 0 and stop_ids:
            procs.append(MinNewTokensLengthLogitsProcessor(prompt_len, sampling.min_tokens, stop_ids,
                                                           device=str(self.device)))
        if not sampling.greedy:
            if sampling.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k:
                procs.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p < 1.0:
                procs.append(TopPLogitsWarper(sampling.top_p))
        return procs

    def end_split(self, end_strings: list[str]) -> tuple[list[int], list[str]]:
        """(stop ids, stop texts) of a set of end strings, remembered: tokenizing them costs more than a step."""
        ends = tuple(end_strings)
        if ends not in self._end_split:
            if len(self._end_split) >= MEMO_SIZE:  # requests choose their end strings: stay bounded
                self._end_split.clear()
            self._end_split[ends] = split_end_strings(self.tokenizer, list(ends))
        return self._end_split[ends]

    def stop_strings(self, texts: list[str]) -> Optional[StopStrings]:
        """One request's matcher for the end strings that are not single tokens (None when there are none)."""
        return StopStrings(self.tokenizer, texts) if texts else None

    def sequence(self, input_ids: list[int], prompt_table: Optional[torch.Tensor], sampling: SamplingSettings,
                 on_token: Optional[TokenCallback] = None) -> Sequence:
        """A request's decoding state (ValueError for a prompt table that does not fit its ids)."""
        return Sequence(self, input_ids, prompt_table, sampling, on_token)

    @torch.inference_mode()
    def generate(self, input_ids: list[int], prompt_table: Optional[torch.Tensor], sampling: SamplingSettings,
                 on_token: Optional[TokenCallback] = None) -> GenerationOutput:
        """One request on its own: a prefill, then one cached step per token.

        The same processors, token choice and stop rules as transformers' generate() (greedy and
        seeded samples are identical to it), without its per-call set-up, which costs more than
        this whole loop on a small model on CPU.
        """
        t0 = time.perf_counter()
        seq = self.sequence(input_ids, prompt_table, sampling, on_token)
        if not seq.done:
            logits, batch = self._prefill(seq.embeds)
            while True:
                tid = seq.choose(logits)
                if seq.done:
                    break
                logits = self._step(self.embed_tokens(torch.tensor([[tid]], device=self.device)), batch)
        out = seq.output()
        out.timings["generate_s"] = time.perf_counter() - t0
        return out


class TransposedLinear(torch.nn.Module):
    """A Linear that keeps its weight transposed ([in, out], contiguous) and computes x @ W^T as one
    matrix product over that layout. On a CPU, a decode step of a few rows (an in-flight batch)
    reads a float32 weight much faster this way than through linear(); one row as fast."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight_t = torch.nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y + self.bias


def transpose_linears(model: torch.nn.Module) -> int:
    """Replace the float32 Linear layers of a causal LM's decoder and head by TransposedLinear, one at a
    time (the original weight is freed as each is replaced). For an LLM that serves on CPU; returns
    how many were replaced."""
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu":
                setattr(parent, name, TransposedLinear(child))
                n += 1
    return n


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
        layers = out.cache.layers
        return out.logits[:, -1], KVBatch.single([x.keys for x in layers], [x.values for x in layers])

    def _step(self, embeds, batch: KVBatch):
        n = embeds.shape[1]
        col = batch.reserve(n)
        cache = Cache(layers=[_BatchLayer(batch, i, col) for i in range(len(batch.keys))])
        positions = batch.new_positions(n).to(embeds.device)
        if batch.rows == 1 and bool(batch.valid.all()):  # one sequence without holes: the plain causal step
            out = self.model(inputs_embeds=embeds, cache=cache, use_cache=True, position_ids=positions,
                             logits_to_keep=1)
        else:  # rows of different lengths, one new position each: their holes masked, each at its own position
            if n != 1:
                raise ValueError("a batch of rows with holes steps one position at a time")
            allowed = batch.step_mask(col).to(embeds.device)
            mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=embeds.device)
            mask.masked_fill_(~allowed, torch.finfo(embeds.dtype).min)
            out = self.model(inputs_embeds=embeds, cache=cache, attention_mask=mask[:, None, None, :],
                             position_ids=positions, use_cache=True)
        batch.advance(n)
        return out.logits[:, -1]

    @torch.inference_mode()
    def logits(self, input_ids: list[int], prompt_table: Optional[torch.Tensor]) -> torch.Tensor:
        """Next-token logits at every position [L, vocab] (parity checks, scoring)."""
        embeds, _ = self.embed(input_ids, prompt_table)
        return self.model(inputs_embeds=embeds).logits[0]


class _BatchLayer(CacheLayerMixin):
    """One layer of a KVBatch as a transformers cache layer for one decode step: the step's key and
    value go into the batch's buffers at column `col` in place, and attention reads views of the
    buffers up to it (no copy of the cache, where a DynamicCache concatenates it at every step)."""

    is_sliding = False

    def __init__(self, batch: KVBatch, index: int, col: int):
        super().__init__()
        self.batch, self.index, self.col = batch, index, col
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        rows, end = self.batch.rows, self.col + key_states.shape[2]
        keys, values = self.batch.keys[self.index], self.batch.values[self.index]
        keys[:rows, :, self.col:end] = key_states
        values[:rows, :, self.col:end] = value_states
        return keys[:rows, :, :end], values[:rows, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.col + query_length, 0

    def get_seq_length(self) -> int:
        return self.col

    def get_max_length(self) -> int:
        return -1
