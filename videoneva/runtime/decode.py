"""One request's decoding state (Sequence) and a batch of them sharing one padded KV cache (KVBatch).

A Sequence holds what is per request: its ids (for the logits processors), transformers' own
processors in the order its generate() applies them, its random generator, its stops, the tokens
and log-probs so far. The CPU LLM backends (torch_backend.py, onnx_backend.py) run the network; the
in-flight batcher (batching.py) steps many Sequences at once over one KVBatch.

KVBatch keeps every active sequence's cache in one tensor per layer, rows aligned on the right:
each decode step appends one column for all rows; a row whose history is shorter than the others'
has invalid columns on its left, masked out of attention. Rows join (padded on the left to the
common length) and leave (removed, and columns no remaining row uses are dropped) between steps.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from videoneva.runtime.base import GenerationOutput
from videoneva.schema import SamplingSettings

TokenCallback = Callable[[int], None]


def mask_padded_vocab(logits: torch.Tensor, limit: int) -> torch.Tensor:
    """-inf at ids >= limit (the tokenizer's size): NeMo pads the LLM's vocabulary past its tokenizer
    (make_vocab_size_divisible_by × TP) and masks those rows when generating (text_generation_utils.py);
    no tokenizer can decode them."""
    if limit < logits.shape[-1]:
        logits[..., limit:] = float("-inf")
    return logits


class Sequence:
    """One request being generated.

    Args:
        lm: the DecodeLoopLanguageModel (embedding, processors, stops).
        input_ids: prompt ids, media positions as fake ids vocab_size + k.
        prompt_table: media rows [N, D] or None.
        sampling: the request's settings.
        on_token: called with each generated id as it is chosen.
    """

    def __init__(self, lm, input_ids: list[int], prompt_table, sampling: SamplingSettings,
                 on_token: Optional[TokenCallback] = None):
        self.sampling, self.on_token = sampling, on_token
        self.embeds, self.ids = lm.embed(input_ids, prompt_table)   # (1, L, D), bookkeeping ids (1, L)
        self.prompt_len = self.ids.shape[1]
        self.stop_ids, stop_texts = lm.end_split(sampling.end_strings)
        self.procs = lm.logits_processors(sampling, self.stop_ids, self.prompt_len)
        self.stop_text = lm.stop_strings(stop_texts)  # one per request: it keeps the text decoded so far
        self.generator = None
        if sampling.seed is not None and not sampling.greedy:
            self.generator = torch.Generator(device=self.ids.device).manual_seed(int(sampling.seed))
        self.new: list[int] = []
        self.raw: list[torch.Tensor] = []
        self.finish: Optional[str] = None if sampling.max_tokens > 0 else "length"
        self.vocab_size, self.vocab_limit = lm.vocab_size, lm.vocab_limit

    @property
    def done(self) -> bool:
        return self.finish is not None

    def choose(self, logits: torch.Tensor) -> int:
        """Pick the next id from next-token logits [1, vocab]; records it and whether the request ends."""
        logits = mask_padded_vocab(logits.float(), self.vocab_limit)  # (1, vocab)
        if self.sampling.return_log_probs:
            self.raw.append(logits[0])
        scores = logits
        for proc in self.procs:  # LogitsProcessorList's own call inspects signatures at every step
            scores = proc(self.ids, scores)
        if self.sampling.greedy:
            nxt = scores.argmax(-1)
        else:
            nxt = torch.multinomial(scores.softmax(-1), 1, generator=self.generator)[:, 0]
        self.ids = torch.cat([self.ids, nxt[:, None]], dim=-1)
        tid = int(nxt)
        self.new.append(tid)
        if self.on_token is not None:
            self.on_token(tid)
        if tid in self.stop_ids or (self.stop_text is not None and self.stop_text.add(tid)):
            self.finish = "stop"
        elif len(self.new) >= self.sampling.max_tokens:
            self.finish = "length"
        return tid

    def output(self) -> GenerationOutput:
        """The generated ids (a final stop id excluded), finish reason and log-probs."""
        new, logprobs = list(self.new), None
        if self.sampling.return_log_probs:
            steps = torch.stack(self.raw).log_softmax(-1) if self.raw else torch.zeros(0, self.vocab_size)
            chosen = torch.tensor(new, dtype=torch.long, device=steps.device)
            logprobs = steps.gather(1, chosen[:, None])[:, 0].tolist()
        if new and new[-1] in self.stop_ids:
            new = new[:-1]
            logprobs = logprobs[: len(new)] if logprobs is not None else None
        return GenerationOutput(new, self.finish or "length", logprobs)


class KVBatch:
    """The caches of several sequences in one tensor per entry of `tensors`, rows right-aligned.

    Args:
        tensors: key and value tensors, each with a batch axis and a sequence axis.
        batch_axis, seq_axis: those axes (the same for every tensor).
        valid: bool [B, T]: which columns hold a row's own positions.
        positions: long [B]: each row's next position id.
    """

    def __init__(self, tensors: list[torch.Tensor], batch_axis: int, seq_axis: int, valid: torch.Tensor,
                 positions: torch.Tensor):
        self.tensors, self.batch_axis, self.seq_axis = tensors, batch_axis, seq_axis
        self.valid, self.positions = valid, positions
        self.backend_state = None  # a backend's own view of the tensors (torch: its cache object)

    @classmethod
    def single(cls, tensors: list[torch.Tensor], batch_axis: int, seq_axis: int) -> "KVBatch":
        length = tensors[0].shape[seq_axis]
        return cls(tensors, batch_axis, seq_axis, torch.ones(1, length, dtype=torch.bool),
                   torch.tensor([length], dtype=torch.long))

    @property
    def rows(self) -> int:
        return self.valid.shape[0]

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def _pad_left(self, n: int) -> None:
        if n <= 0:
            return
        def pad(t: torch.Tensor) -> torch.Tensor:
            shape = list(t.shape)
            shape[self.seq_axis] = n
            return torch.cat([t.new_zeros(shape), t], dim=self.seq_axis)
        self.tensors = [pad(t) for t in self.tensors]
        self.valid = torch.cat([self.valid.new_zeros(self.rows, n), self.valid], dim=1)

    def join(self, other: "KVBatch") -> None:
        """Add other's rows (both padded on the left to the longer length)."""
        self._pad_left(other.length - self.length)
        other._pad_left(self.length - other.length)
        self.tensors = [torch.cat([a, b], dim=self.batch_axis) for a, b in zip(self.tensors, other.tensors)]
        self.valid = torch.cat([self.valid, other.valid])
        self.positions = torch.cat([self.positions, other.positions])

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows, and drop the leading columns none of them uses."""
        index = torch.tensor(rows, dtype=torch.long)
        self.valid, self.positions = self.valid[index], self.positions[index]
        used = self.valid.any(0).nonzero()
        start = int(used[0]) if len(used) else self.length
        self.tensors = [t.index_select(self.batch_axis, index).narrow(self.seq_axis, start, self.length - start)
                        for t in self.tensors]
        self.valid = self.valid[:, start:]

    def appended(self, tensors: list[torch.Tensor]) -> None:
        """The tensors after a step that appended one column to every row."""
        self.tensors = tensors
        self.valid = torch.cat([self.valid, self.valid.new_ones(self.rows, 1)], dim=1)
        self.positions = self.positions + 1

    def step_mask(self) -> torch.Tensor:
        """bool [B, T + 1]: the columns each row's next position may attend to (its own and itself)."""
        return torch.cat([self.valid, self.valid.new_ones(self.rows, 1)], dim=1)
