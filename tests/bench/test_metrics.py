"""Percentile and throughput arithmetic of the benchmark summary, on inputs with known answers."""
from __future__ import annotations

import pytest

from videoneva.bench.loadgen import arrival_offsets
from videoneva.bench.metrics import RequestRecord, same_outputs, summarize, wall_time
from videoneva.errors import ConfigError
from videoneva.stats import Stats


def records() -> list[RequestRecord]:
    # 4 successful requests starting at 0, 1, 2, 3 s, each 1..4 s long, 5 tokens, first token
    # after 0.1·k s and then one token every 0.05·k s; one failed request.
    out = []
    for k in range(1, 5):
        start = float(k - 1)
        first = start + 0.1 * k
        out.append(RequestRecord(start=start, end=start + k, first_token=first, last_token=first + 4 * 0.05 * k,
                                 output_tokens=5, question_id=k, output_ids=[k] * 5))
    out.append(RequestRecord(start=0.5, end=0.6, error="RequestFailed: bad media", question_id=99))
    return out


def test_stats_percentiles_linear_interpolation():
    s = Stats.of([1.0, 2.0, 3.0, 4.0])
    assert (s.p50, s.p90, s.p99) == pytest.approx((2.5, 3.7, 3.97))
    assert (s.mean, s.min, s.max, s.n) == (2.5, 1.0, 4.0, 4)
    assert s.std == pytest.approx(1.118033988749895)
    one = Stats.of([7.0])
    assert one.p50 == one.p99 == 7.0 and one.std == 0.0
    with pytest.raises(ValueError):
        Stats.of([])


def test_summary_latencies_and_throughput():
    recs = records()
    wall = wall_time(recs)
    assert wall == 7.0  # first start 0 s, last end 3 + 4 s
    s = summarize(recs, wall, concurrency=2)
    assert (s.requests, s.errors, s.concurrency, s.request_rate) == (5, 1, 2, None)
    assert s.e2e.p50 == pytest.approx(2.5) and s.e2e.p90 == pytest.approx(3.7) and s.e2e.p99 == pytest.approx(3.97)
    assert s.ttft.p50 == pytest.approx(0.25) and s.ttft.max == pytest.approx(0.4)
    assert s.itl.p50 == pytest.approx(0.125) and s.itl.min == pytest.approx(0.05)  # 0.05·k per token
    assert s.requests_per_s == pytest.approx(4 / 7)  # the failed request is not throughput
    assert s.output_tokens == 20 and s.output_tokens_per_s == pytest.approx(20 / 7)
    assert s.tokens_per_request.p50 == 5
    assert s.error_samples == ["RequestFailed: bad media"]


def test_missing_data_is_none_not_zero():
    failed = [RequestRecord(start=0.0, end=1.0, error="boom")]
    s = summarize(failed, 1.0, concurrency=1)
    assert s.requests_per_s is None and s.output_tokens_per_s is None
    assert s.e2e is None and s.ttft is None and s.itl is None and s.tokens_per_request is None
    # a non-streaming success: e2e but no TTFT / ITL; one token: no ITL
    s = summarize([RequestRecord(0.0, 2.0, output_tokens=3), RequestRecord(0.0, 1.0, 0.5, 0.5, 1)], 2.0, 1)
    assert s.e2e.n == 2 and s.ttft.n == 1 and s.itl is None
    with pytest.raises(ValueError):
        summarize(failed, 0.0, 1)


def test_same_outputs_fraction():
    a = records()
    b = [RequestRecord(r.start, r.end, output_tokens=r.output_tokens, question_id=r.question_id,
                       output_ids=list(r.output_ids) if r.output_ids else None) for r in a]
    b[0].output_ids = [0, 0]
    assert same_outputs(a, b) == pytest.approx(3 / 4)
    assert same_outputs(a, []) is None


def test_poisson_arrivals():
    assert arrival_offsets(5, None) is None
    t = arrival_offsets(20000, 4.0, seed=1)
    assert t[0] == 0.0 and (t[1:] >= t[:-1]).all()
    assert t[-1] / (len(t) - 1) == pytest.approx(0.25, rel=0.03)  # mean gap 1 / rate
    assert (arrival_offsets(10, 2.0, seed=3) == arrival_offsets(10, 2.0, seed=3)).all()
    with pytest.raises(ConfigError):
        arrival_offsets(3, 0.0)
