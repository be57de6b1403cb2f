"""Load generator: send jobs to a target at a fixed concurrency (optionally a Poisson request rate), time each.

A target is anything with `send(job, on_token) -> output ids`: the Triton server over gRPC
(ServerTarget), the in-process Pipeline (PipelineTarget) or the plain-transformers baseline
(videoneva.bench.baseline.BaselineTarget). `on_token(n)` is called as output streams (n tokens or
one text piece), which gives TTFT and inter-token latency for every target the same way.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

import numpy as np

from videoneva.bench.metrics import LevelSummary, RequestRecord, summarize, wall_time
from videoneva.errors import ConfigError
from videoneva.jobfiles import read_prompt_file


@dataclass
class Job:
    """One prompt-file line to send."""

    question_id: object
    text: str
    media_type: Optional[str] = None
    media_path: Optional[str] = None   # relative to the media root


@dataclass
class GenSettings:
    """Decoding settings shared by every target of a run (greedy, fixed length when ignore_eos)."""

    tokens_to_generate: int = 32
    ignore_eos: bool = False           # min_tokens = tokens_to_generate: every answer has the same length
    greedy: bool = True
    repetition_penalty: float = 1.0    # plain greedy: what a baseline's generate() does by default

    @property
    def min_tokens(self) -> int:
        return self.tokens_to_generate if self.ignore_eos else 0


class Target(Protocol):
    name: str

    def send(self, job: Job, on_token: Callable[[int], None]) -> list[int]:
        """Answer job; call on_token(n) as output streams; return the output token ids."""


def load_jobs(prompt_file: str | Path, media_type: str = "video") -> list[Job]:
    """The valid lines of a prompt file as jobs (ConfigError when none is valid)."""
    lines = read_prompt_file(prompt_file, media_type)
    jobs = [Job(ln.question_id, ln.text, ln.media_type, ln.media_path) for ln in lines if ln.error is None]
    if not jobs:
        bad = "; ".join(ln.error for ln in lines[:3] if ln.error)
        raise ConfigError(f"prompt_file {prompt_file}: no usable lines ({bad or 'empty'})")
    return jobs


def arrival_offsets(n: int, request_rate: Optional[float], seed: int = 0) -> Optional[np.ndarray]:
    """Send times (s after the level starts) of a Poisson process at request_rate; None: no pacing."""
    if request_rate is None:
        return None
    if request_rate <= 0:
        raise ConfigError(f"request_rate must be > 0 requests/s, got {request_rate}")
    gaps = np.random.default_rng(seed).exponential(1.0 / request_rate, n)  # (n,) seconds
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])])


def timed_send(target: Target, job: Job) -> RequestRecord:
    """One request through target with its timings; an exception becomes the record's error."""
    box: dict = {"n": 0}

    def on_token(n: int = 1) -> None:
        now = time.perf_counter()
        if "first" not in box:
            box["first"] = now
        box["last"], box["n"] = now, box["n"] + n

    start = time.perf_counter()
    try:
        ids = target.send(job, on_token)
    except Exception as exc:  # noqa: BLE001  a failed request is data for the report, not a crash
        return RequestRecord(start, time.perf_counter(), error=f"{type(exc).__name__}: {exc}"[:500],
                             question_id=job.question_id)
    end = time.perf_counter()
    return RequestRecord(start, end, box.get("first"), box.get("last"), len(ids), question_id=job.question_id,
                         output_ids=list(ids))


def run_level(target: Target, jobs: list[Job], concurrency: int, num_requests: int,
              request_rate: Optional[float] = None, warmup: int = 0, seed: int = 0,
              progress: bool = True) -> tuple[list[RequestRecord], LevelSummary]:
    """Send warmup untimed requests, then num_requests timed ones, at most `concurrency` in flight.

    Args:
        target: where requests go.
        jobs: cycled in order (request i sends jobs[i % len(jobs)]), the same order for every target.
        concurrency: requests in flight at most.
        num_requests: timed requests.
        request_rate: Poisson arrivals per second (None: a new request as soon as one finishes).
        warmup: requests sent (at the same concurrency) before timing starts.
        seed: seed of the arrival times.
        progress: show a tqdm progress bar.
    """
    if concurrency < 1 or num_requests < 1 or warmup < 0:
        raise ConfigError(f"need concurrency >= 1, num_requests >= 1, warmup >= 0; got {concurrency}, "
                          f"{num_requests}, {warmup}")
    if warmup:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda i: timed_send(target, jobs[i % len(jobs)]), range(warmup)))
    offsets = arrival_offsets(num_requests, request_rate, seed)
    slots = threading.Semaphore(concurrency)
    records: list[Optional[RequestRecord]] = [None] * num_requests
    bar = None
    if progress:
        from tqdm import tqdm

        rate = "" if request_rate is None else f" rate={request_rate:g}/s"
        bar = tqdm(total=num_requests, desc=f"{target.name} c={concurrency}{rate}", unit="req", leave=False)

    def one(i: int) -> None:
        try:
            records[i] = timed_send(target, jobs[(warmup + i) % len(jobs)])
        finally:
            slots.release()
            if bar is not None:
                bar.update(1)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for i in range(num_requests):
            if offsets is not None:
                time.sleep(max(0.0, t0 + offsets[i] - time.perf_counter()))
            slots.acquire()
            pool.submit(one, i)
    if bar is not None:
        bar.close()
    done = [r for r in records if r is not None]
    return done, summarize(done, wall_time(done), concurrency, request_rate)


class ServerTarget:
    """The `videoneva` Triton model over gRPC, text streamed; media sent as bytes or as a server-side path.

    Args:
        client: a videoneva.serving.Client.
        gen: decoding settings.
        media_root: folder the jobs' media paths are relative to (read here when send_media="bytes").
        send_media: "bytes" (as a remote client) | "path" (the server's media_root).
        insert_media_token: left | right | None (the server's setting).
    """

    name = "triton"

    def __init__(self, client, gen: GenSettings, media_root: Optional[str | Path] = None, send_media: str = "bytes",
                 insert_media_token: Optional[str] = None):
        from videoneva.media.sources import MediaRoot

        if send_media not in ("bytes", "path"):
            raise ConfigError(f"send_media={send_media!r}: choose bytes or path")
        self.client, self.gen, self.send_media, self.insert = client, gen, send_media, insert_media_token
        self.root = MediaRoot(str(media_root)) if media_root is not None else None
        self._bytes: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.stages: list[dict] = []  # the server's own timings per answered request (where the time goes)

    def media(self, job: Job) -> dict:
        if job.media_type is None:
            return {}
        if self.send_media == "path":
            return {"media_type": job.media_type, "media_path": job.media_path}
        with self._lock:  # each file read once: the benchmark times the server, not this disk
            if job.media_path not in self._bytes:
                if self.root is None:
                    raise ConfigError("send_media=bytes needs media_base_path (where the prompt file's media are)")
                self._bytes[job.media_path] = self.root.read_bytes(job.media_path)
        return {"media_type": job.media_type, "media_bytes": self._bytes[job.media_path]}

    def send(self, job: Job, on_token: Callable[[int], None]) -> list[int]:
        g = self.gen
        result = self.client.answer(job.text, on_delta=lambda _text: on_token(1), request_id=str(job.question_id),
                                    max_tokens=g.tokens_to_generate, min_tokens=g.min_tokens, greedy=g.greedy,
                                    repetition_penalty=g.repetition_penalty, insert_media_token=self.insert,
                                    **self.media(job))
        with self._lock:
            self.stages.append({**result.timings, "cache": result.media.get("cache")})
        return list(result.token_ids)


class PipelineTarget:
    """The in-process Pipeline (ONNX Runtime vision + torch LLM), one request at a time.

    Args:
        pipeline: a videoneva.runtime.pipeline.Pipeline.
        gen: decoding settings.
        insert_media_token: left | right | None (the pipeline's setting).
    """

    name = "pipeline"

    def __init__(self, pipeline, gen: GenSettings, insert_media_token: Optional[str] = None):
        self.pipeline, self.gen, self.insert = pipeline, gen, insert_media_token
        self._lock = threading.Lock()  # one torch model: requests run one after another

    def send(self, job: Job, on_token: Callable[[int], None]) -> list[int]:
        from videoneva.generation import SamplingSettings
        from videoneva.runtime.pipeline import Request

        g = self.gen
        sampling = SamplingSettings(max_tokens=g.tokens_to_generate, min_tokens=g.min_tokens,
                                    greedy=g.greedy, repetition_penalty=g.repetition_penalty,
                                    end_strings=list(self.pipeline.stop_strings))
        with self._lock:
            ans = self.pipeline.answer(Request(job.text, job.media_type, job.media_path,
                                               insert_media_token=self.insert), sampling,
                                       on_delta=lambda d: [on_token(1) for _ in d.token_ids])
        return list(ans.token_ids)
