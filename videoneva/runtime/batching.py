"""In-flight batching for the CPU LLMs: one executor thread steps every request in flight together.

Requests are queued as they arrive (from any thread); between decode steps the executor admits
queued ones (a prefill each, then they join the batch), steps every active sequence with one
batched forward pass over the shared KVBatch (runtime/decode.py), and removes the sequences that
finished or were cancelled, freeing their cache rows. Each sequence keeps its own sampling,
seed, end strings, max_tokens, log-probs and streaming callback, so an answer is the one it gets
alone (up to the float rounding of a batched matmul).

Limits: `max_batch_size` active sequences, and `max_kv_tokens` positions of the padded batch
cache (rows × longest row, counted to where every row would end), the CPU's KV budget.

Prefix reuse: with `prefix_cache_bytes` > 0, the cache of a prompt's prefix up to and including its
media rows is kept (an LRU bounded in bytes), keyed by the media's content hash and the prefix's
ids, so a later question about the same media prefills only what follows the media. Two media
never share an entry because their fake ids coincide: the content hash is part of the key.
"""
from __future__ import annotations

import collections
import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from videoneva.errors import PromptError, VideoNevaError
from videoneva.runtime.base import GenerationOutput, TokenCallback
from videoneva.runtime.cache import FeatureCache
from videoneva.runtime.decode import KVBatch, Sequence
from videoneva.schema import SamplingSettings


class Cancelled(VideoNevaError):
    """The request was cancelled before it finished (by its client, or the executor stopped)."""


class Handle:
    """A submitted request: wait for its result, or cancel it (it leaves the batch at the next step).

    on_done, when given, is called in the executor's thread with (result, error) once it ends.
    """

    def __init__(self, seq: Sequence, on_done=None, prefix: Optional[tuple[str, int]] = None):
        self.seq, self.on_done, self.prefix = seq, on_done, prefix  # prefix: (cache key, length) to reuse
        self._done = threading.Event()
        self._result: Optional[GenerationOutput] = None
        self._error: Optional[BaseException] = None
        self.cancelled = False
        self.submitted = time.perf_counter()

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _finish(self, result: Optional[GenerationOutput] = None, error: Optional[BaseException] = None) -> None:
        self._result, self._error = result, error
        self._done.set()
        if self.on_done is not None:
            self.on_done(result, error)

    def result(self, timeout: Optional[float] = None) -> GenerationOutput:
        if not self._done.wait(timeout):
            raise TimeoutError(f"no result within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result


@dataclass
class BatchStats:
    """What the executor has done: for metrics (videoneva_llm_*) and benchmarks."""

    steps: int = 0
    step_sequences: int = 0                # sum of batch sizes over steps (tokens decoded in steps)
    prefills: int = 0
    prefix_hits: int = 0                   # prefills that reused a cached prefix
    finished: int = 0
    cancelled: int = 0
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)   # batch size → steps
    step_seconds: collections.Counter = field(default_factory=collections.Counter)  # batch size → seconds


class BatchingLanguageModel:
    """A LanguageModel whose generate() calls, from any number of threads, are decoded together.

    Args:
        lm: a DecodeLoopLanguageModel (torch or ONNX Runtime LLM).
        max_batch_size: most sequences decoded at once (the rest wait in the queue).
        max_kv_tokens: most positions of the padded batch cache; None: no limit.
        prefix_cache_bytes: bytes of prompt-prefix caches kept for reuse (0: none).
    """

    def __init__(self, lm, max_batch_size: int = 16, max_kv_tokens: Optional[int] = None, prefix_cache_bytes: int = 0):
        self.lm, self.max_batch_size, self.max_kv_tokens = lm, max_batch_size, max_kv_tokens
        self.prefixes = FeatureCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self.tokenizer = lm.tokenizer
        self.vocab_size, self.hidden_size, self.max_context = lm.vocab_size, lm.hidden_size, lm.max_context
        self.image_token_id = lm.image_token_id
        self.stats = BatchStats()
        self._queue: collections.deque[Handle] = collections.deque()
        self._active: list[Handle] = []
        self._batch: Optional[KVBatch] = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="videoneva-llm-batcher", daemon=True)
        self._thread.start()

    # -- the LanguageModel interface ------------------------------------------------------------
    @torch.inference_mode()
    def submit(self, input_ids: list[int], prompt_table, sampling: SamplingSettings,
               on_token: Optional[TokenCallback] = None, on_done=None, media_key: Optional[str] = None) -> Handle:
        """Queue one request; errors in its ids or table raise here, in the caller's thread.

        on_token gets each id as it is chosen, on_done (result, error) at the end, both in the
        executor's thread. media_key (the media's content hash) keys the reuse of the prompt's
        prefix up to its media rows.
        """
        return self.submit_many([(input_ids, prompt_table, sampling, on_token, on_done, media_key)])[0]

    @torch.inference_mode()
    def submit_many(self, requests: list[tuple]) -> list[Handle]:
        """Queue several requests at once (input_ids, prompt_table, sampling[, on_token[, on_done[, media_key]]]):
        none is admitted before all are queued, so they start in the same step where the limits allow."""
        handles = []
        for input_ids, prompt_table, sampling, *rest in requests:
            on_token, on_done, media_key = (list(rest) + [None, None, None])[:3]
            seq = self.lm.sequence(input_ids, prompt_table, sampling, on_token)
            if self.max_kv_tokens is not None and seq.prompt_len + sampling.max_tokens > self.max_kv_tokens:
                raise PromptError(f"the prompt ({seq.prompt_len} positions) and max_tokens={sampling.max_tokens} exceed "
                                  f"the LLM's KV budget of {self.max_kv_tokens} positions (max_kv_tokens)")
            handles.append(Handle(seq, on_done, self._prefix_of(input_ids, media_key)))
        with self._cond:
            for handle in handles:
                if handle.seq.done:  # max_tokens=0: nothing to generate
                    handle._finish(handle.seq.output())
                else:
                    self._queue.append(handle)
            self._cond.notify()
        return handles

    def _prefix_of(self, input_ids: list[int], media_key: Optional[str]) -> Optional[tuple[str, int]]:
        """(cache key, length) of the prompt's prefix up to and including its last media row (at least
        one position is left to prefill, for the logits); None when there is nothing to reuse."""
        if self.prefixes is None or media_key is None:
            return None
        last = max((i for i, t in enumerate(input_ids) if t >= self.lm.vocab_size), default=-1)
        n = min(last + 1, len(input_ids) - 1)
        if last < 0 or n <= 0:
            return None
        digest = hashlib.sha256(torch.tensor(input_ids[:n], dtype=torch.int64).numpy().tobytes()).hexdigest()
        return f"{media_key}:{digest}", n

    def generate(self, input_ids: list[int], prompt_table, sampling: SamplingSettings,
                 on_token: Optional[TokenCallback] = None, media_key: Optional[str] = None) -> GenerationOutput:
        t0 = time.perf_counter()
        out = self.submit(input_ids, prompt_table, sampling, on_token, media_key=media_key).result()
        out.timings["generate_s"] = time.perf_counter() - t0
        return out

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(30)

    # -- figures for metrics ----------------------------------------------------------------------
    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def kv_tokens(self) -> int:
        batch = self._batch
        return 0 if batch is None else batch.rows * batch.length

    def figures(self) -> dict[str, int]:
        """The executor's state and counters (Triton metrics videoneva_llm_*)."""
        budget = self.max_kv_tokens if self.max_kv_tokens is not None else self.max_batch_size * self.max_context
        s = self.stats
        return {"active_sequences": self.active, "queued_requests": self.queued, "steps": s.steps,
                "step_sequences": s.step_sequences, "prefills": s.prefills, "prefix_hits": s.prefix_hits,
                "cancelled": s.cancelled,
                "kv_tokens_used": self.kv_tokens, "kv_tokens_free": max(budget - self.kv_tokens, 0)}

    # -- the executor thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._queue and not self._active:
                    self._cond.wait()
                if self._stop:
                    for h in [*self._queue, *self._active]:
                        h._finish(error=Cancelled("the LLM executor stopped"))
                    return
            with torch.inference_mode():
                self._admit()
                if self._active:
                    self._step()

    def _future_length(self, handles: list[Handle]) -> int:
        """Columns the batch would reach with these rows if each generated to its max_tokens."""
        if self._batch is None:
            return 0
        left = self._batch.length - (self._batch.valid.sum(1) if self._batch.rows else 0)
        rows = [int(self._batch.length - int(left[i]) + h.seq.sampling.max_tokens - len(h.seq.new))
                for i, h in enumerate(handles)]
        return max(rows, default=0)

    def _fits(self, handle: Handle) -> bool:
        if len(self._active) >= self.max_batch_size:
            return False
        if self.max_kv_tokens is None or not self._active:
            return True
        need = max(self._future_length(self._active), handle.seq.prompt_len + handle.seq.sampling.max_tokens)
        return (len(self._active) + 1) * need <= self.max_kv_tokens

    def _admit(self) -> None:
        """Prefill queued requests while there is room; each joins the batch with its first token."""
        while True:
            with self._cond:
                while self._queue and self._queue[0].cancelled:
                    self._queue.popleft()._finish(error=Cancelled("cancelled while queued"))
                    self.stats.cancelled += 1
                if not self._queue or not self._fits(self._queue[0]):
                    return
                handle = self._queue.popleft()
            seq = handle.seq
            try:
                logits, single = self._prefill(handle)
                self.stats.prefills += 1
                seq.choose(logits)
            except Exception as exc:  # noqa: BLE001  this request fails; the batch goes on
                handle._finish(error=exc)
                continue
            if seq.done:
                self._retire(handle)
                continue
            if self._batch is None:
                self._batch = single
            else:
                self._batch.join(single)
            self._active.append(handle)

    def _prefill(self, handle: Handle):
        """(next-token logits, the prompt's one-row KVBatch): with a cached prefix, only the rest of the
        prompt runs; without, a prefix worth keeping runs first and is stored."""
        embeds = handle.seq.embeds
        if handle.prefix is None:
            return self.lm._prefill(embeds)
        key, n = handle.prefix
        hit = self.prefixes.get(key)
        if hit is None:
            _, single = self.lm._prefill(embeds[:, :n])
            self.prefixes.put(key, single.prefix(n))
        else:
            self.stats.prefix_hits += 1
            kv = hit[0]
            single = KVBatch.single(list(kv[0, :, None]), list(kv[1, :, None]))
        return self.lm._step(embeds[:, n:], single), single

    def _step(self) -> None:
        """One decode step for every active sequence; finished and cancelled ones leave the batch."""
        handles, batch = self._active, self._batch
        last = torch.tensor([[h.seq.new[-1]] for h in handles], device=self.lm.device)
        t0 = time.perf_counter()
        try:
            logits = self.lm._step(self.lm.embed_tokens(last), batch)  # (B, vocab)
        except Exception as exc:  # noqa: BLE001  the batch's state is unknown: fail its requests, keep serving
            for h in handles:
                h._finish(error=exc)
            self._active, self._batch = [], None
            return
        n = len(handles)
        self.stats.steps += 1
        self.stats.step_sequences += n
        self.stats.batch_sizes[n] += 1
        self.stats.step_seconds[n] += time.perf_counter() - t0
        keep, ended = [], []
        for i, h in enumerate(handles):
            if h.cancelled:
                self.stats.cancelled += 1
                ended.append((h, None, Cancelled("the request was cancelled")))
                continue
            try:
                h.seq.choose(logits[i:i + 1])
            except Exception as exc:  # noqa: BLE001  e.g. a streaming callback that raised
                ended.append((h, None, exc))
                continue
            if h.seq.done:
                self.stats.finished += 1
                ended.append((h, h.seq.output(), None))
            else:
                keep.append(i)
        if len(keep) < n:
            self._active = [handles[i] for i in keep]
            if keep:
                batch.keep(keep)
            else:
                self._batch = None
        for h, result, error in ended:  # after the batch let go of them: their rows count as free
            h._finish(result, error)

    def _retire(self, handle: Handle) -> None:
        self.stats.finished += 1
        handle._finish(handle.seq.output())
