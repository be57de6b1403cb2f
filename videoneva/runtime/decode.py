"""One request's decoding state (Sequence) and a batch of them sharing one padded KV cache (KVBatch).

A Sequence holds what is per request: its ids (for the logits processors), transformers' own
processors in the order its generate() applies them, its random generator, its stops, the tokens
and log-probs so far. The CPU LLM backends (torch_backend.py, onnx_backend.py) run the network; the
in-flight batcher (batching.py) steps many Sequences at once over one KVBatch.

KVBatch keeps every active sequence's cache in preallocated buffers, one key and one value buffer
per layer, rows aligned on the right: each decode step writes one column for all rows in place; a
row whose history is shorter than the others' has invalid columns on its left, masked out of
attention. Rows join (copied in, right-aligned) and leave between steps.
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
    """The caches of several sequences: per layer, a key and a value buffer [rows, kv_heads, columns, head_dim].

    Rows are right-aligned on column `length`: a decode step writes one column for every row in
    place (no copy of the cache), and a row whose history is shorter than the others' has invalid
    columns on its left, masked out of attention. The buffers hold spare rows and columns, so a
    step only writes into them; they are reallocated (one copy) when the batch outgrows them, with
    head room in proportion to the length. Rows join (their history copied in, right-aligned)
    and leave (the later rows move up) between steps; columns no row uses any more are dropped.

    Args:
        keys, values: per layer, tensors [rows, kv_heads, length, head_dim] (copied into buffers).
        valid: bool [rows, length]: which columns hold a row's own positions.
        positions: long [rows]: each row's next position id.
    """

    MIN_SPARE_COLUMNS = 32

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], valid: torch.Tensor,
                 positions: torch.Tensor):
        self.valid, self.positions = valid, positions
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._allocate(keys, values, self.rows, self.length, 0)

    @classmethod
    def single(cls, keys: list[torch.Tensor], values: list[torch.Tensor]) -> "KVBatch":
        """One row from a prompt's cache (per layer [1, kv_heads, L, head_dim])."""
        length = keys[0].shape[2]
        return cls(keys, values, torch.ones(1, length, dtype=torch.bool), torch.tensor([length], dtype=torch.long))

    @property
    def rows(self) -> int:
        return self.valid.shape[0]

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    @property
    def capacity(self) -> int:
        """Columns the buffers hold (the length and the spare ones)."""
        return self.keys[0].shape[2]

    def _spare(self, columns: int) -> int:
        return max(self.MIN_SPARE_COLUMNS, columns // 8)

    def _allocate(self, keys: list[torch.Tensor], values: list[torch.Tensor], rows: int, length: int,
                  shift: int) -> None:
        """New buffers for `rows` rows and `length` + spare columns; the first keys[i].shape[0] rows get
        the given tensors' columns [0, n) at [shift, shift + n)."""
        columns = length + self._spare(length)
        new_k, new_v = [], []
        for k, v in zip(keys, values):
            n = min(k.shape[0], rows)
            bk = k.new_zeros(max(rows, 1), k.shape[1], columns, k.shape[3])
            bv = v.new_zeros(max(rows, 1), v.shape[1], columns, v.shape[3])
            width = min(k.shape[2], length - shift)
            bk[:n, :, shift:shift + width] = k[:n, :, :width]
            bv[:n, :, shift:shift + width] = v[:n, :, :width]
            new_k.append(bk)
            new_v.append(bv)
        self.keys, self.values = new_k, new_v

    def _used(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([k[: self.rows, :, : self.length] for k in self.keys],
                [v[: self.rows, :, : self.length] for v in self.values])

    def join(self, other: "KVBatch") -> None:
        """Add other's rows, right-aligned on the common length."""
        rows, grow = self.rows + other.rows, max(other.length - self.length, 0)
        if grow or rows > self.keys[0].shape[0]:
            keys, values = self._used()
            self._allocate(keys, values, max(rows, 2 * self.keys[0].shape[0]) if rows > self.keys[0].shape[0]
                           else self.keys[0].shape[0], self.length + grow, grow)
            self.valid = torch.cat([self.valid.new_zeros(self.rows, grow), self.valid], dim=1)
        start = self.length - other.length
        for dst, src in ((self.keys, other.keys), (self.values, other.values)):
            for d, s in zip(dst, src):
                d[self.rows:rows, :, start:self.length] = s[: other.rows, :, : other.length]
        other_valid = torch.cat([other.valid.new_zeros(other.rows, start), other.valid], dim=1)
        self.valid = torch.cat([self.valid, other_valid])
        self.positions = torch.cat([self.positions, other.positions])

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (ascending), and drop the leading columns none of them uses."""
        for i, r in enumerate(rows):  # r >= i: a row only moves up, onto one already moved or gone
            if r != i:
                for buf in (*self.keys, *self.values):
                    buf[i, :, : self.length] = buf[r, :, : self.length]
        index = torch.tensor(rows, dtype=torch.long)
        self.valid, self.positions = self.valid[index], self.positions[index]
        used = self.valid.any(0).nonzero()
        start = int(used[0]) if len(used) else self.length
        if start:
            n = self.length - start
            for buf in (*self.keys, *self.values):
                buf[: len(rows), :, :n] = buf[: len(rows), :, start:self.length].clone()
            self.valid = self.valid[:, start:]

    def reserve(self, n: int = 1) -> int:
        """Make room for n more columns (reallocating when the buffers are full); returns the first's index."""
        if self.length + n > self.capacity:
            keys, values = self._used()
            self._allocate(keys, values, self.keys[0].shape[0], self.length + n, 0)
        return self.length

    def past(self, columns: Optional[int] = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer, views [rows, kv_heads, columns, head_dim] of the buffers (default: every column,
        a contiguous block; the mask of step_mask(columns) covers what is not the rows' own)."""
        columns = self.capacity if columns is None else columns
        return ([k[: self.rows, :, :columns] for k in self.keys], [v[: self.rows, :, :columns] for v in self.values])

    def write(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Store a step's new columns (per layer [rows, kv_heads, n, head_dim]) and advance."""
        n = keys[0].shape[2]
        col = self.reserve(n)
        for dst, src in ((self.keys, keys), (self.values, values)):
            for d, s in zip(dst, src):
                d[: self.rows, :, col:col + n] = s
        self.advance(n)

    def advance(self, n: int = 1) -> None:
        """Count the n columns a step wrote in place (at reserve()'s index) as every row's own."""
        self.valid = torch.cat([self.valid, self.valid.new_ones(self.rows, n)], dim=1)
        self.positions = self.positions + n

    def new_positions(self, n: int = 1) -> torch.Tensor:
        """long [B, n]: the position ids of each row's next n positions."""
        return self.positions[:, None] + torch.arange(n)

    def step_mask(self, columns: Optional[int] = None, n: int = 1) -> torch.Tensor:
        """bool [B, columns + n]: the cache columns each row's next n positions may attend to, then
        those positions (causal among themselves: the model's own mask)."""
        columns = self.capacity if columns is None else columns
        mask = self.valid.new_zeros(self.rows, columns + n)
        mask[:, : self.length] = self.valid
        mask[:, columns:] = True
        return mask

    def prefix(self, n: int) -> torch.Tensor:
        """The first row's first n own columns, copied out: [2 (keys, values), layers, kv_heads, n, head_dim]."""
        start = self.length - int(self.valid[0].sum())
        return torch.stack([buf[0, :, start:start + n] for buf in (*self.keys, *self.values)]).unflatten(
            0, (2, len(self.keys)))
