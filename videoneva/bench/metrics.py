"""Per-request timing records and their summary: TTFT, inter-token latency, end-to-end latency, throughput.

Definitions (those of genai-perf / AIPerf):
  TTFT        first streamed token (or text piece) − request start
  ITL         (last token − first token) / (output tokens − 1), one value per request with ≥ 2 tokens
  e2e         final response − request start
  output tokens/s   Σ output tokens of successful requests / wall time of the level
  requests/s        successful requests / wall time of the level
Failed requests count as errors and are left out of every latency and throughput figure.
Missing data (no streamed token, no successful request) is None, never 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from videoneva.stats import Stats


@dataclass
class RequestRecord:
    """One timed request; times are time.perf_counter() seconds."""

    start: float
    end: float
    first_token: Optional[float] = None   # None when nothing streamed (non-streaming or failed)
    last_token: Optional[float] = None
    output_tokens: int = 0
    error: Optional[str] = None
    question_id: Optional[object] = None
    output_ids: Optional[list[int]] = None  # kept to compare targets' outputs ("same outputs")

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class LevelSummary:
    """The figures of one load level (one concurrency, optionally one request rate)."""

    concurrency: int
    request_rate: Optional[float]
    requests: int
    errors: int
    wall_s: float
    requests_per_s: Optional[float]
    output_tokens_per_s: Optional[float]
    output_tokens: int = 0
    e2e: Optional[Stats] = None
    ttft: Optional[Stats] = None
    itl: Optional[Stats] = None
    tokens_per_request: Optional[Stats] = None
    error_samples: list = field(default_factory=list)


def summarize(records: list[RequestRecord], wall_s: float, concurrency: int,
              request_rate: Optional[float] = None) -> LevelSummary:
    """Summary of one load level from its request records and the level's wall time.

    Args:
        records: the timed (post warm-up) requests of the level.
        wall_s: seconds from the first timed request's start to the last one's end.
        concurrency: requests in flight at most.
        request_rate: target arrivals per second (None: as fast as concurrency allows).
    """
    if wall_s <= 0:
        raise ValueError(f"wall_s must be > 0, got {wall_s}")
    ok = [r for r in records if r.ok]
    e2e = [r.end - r.start for r in ok]
    ttft = [r.first_token - r.start for r in ok if r.first_token is not None]
    itl = [(r.last_token - r.first_token) / (r.output_tokens - 1) for r in ok
           if r.first_token is not None and r.last_token is not None and r.output_tokens >= 2]
    tokens = sum(r.output_tokens for r in ok)
    return LevelSummary(
        concurrency=concurrency, request_rate=request_rate, requests=len(records), errors=len(records) - len(ok),
        wall_s=wall_s, requests_per_s=len(ok) / wall_s if ok else None,
        output_tokens_per_s=tokens / wall_s if ok else None, output_tokens=tokens,
        e2e=Stats.of(e2e) if e2e else None, ttft=Stats.of(ttft) if ttft else None,
        itl=Stats.of(itl) if itl else None,
        tokens_per_request=Stats.of([r.output_tokens for r in ok], "tokens") if ok else None,
        error_samples=[r.error for r in records if not r.ok][:5])


def wall_time(records: list[RequestRecord]) -> float:
    """First start to last end of a set of records (the level's wall time)."""
    return max(r.end for r in records) - min(r.start for r in records)


def same_outputs(a: list[RequestRecord], b: list[RequestRecord]) -> Optional[float]:
    """Fraction of question_ids answered by both with identical output ids (None: nothing to compare)."""
    ids_a = {repr(r.question_id): r.output_ids for r in a if r.ok and r.output_ids is not None}
    ids_b = {repr(r.question_id): r.output_ids for r in b if r.ok and r.output_ids is not None}
    common = sorted(set(ids_a) & set(ids_b))
    if not common:
        return None
    return sum(ids_a[k] == ids_b[k] for k in common) / len(common)
