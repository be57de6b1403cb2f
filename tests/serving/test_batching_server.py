"""In-flight batching on the live server: concurrent requests share decode steps and still answer
as each does alone; a cancelled request frees its slot; the llm's figures are Triton metrics."""
from __future__ import annotations

import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from videoneva import prompts
from videoneva.schema import Request, SamplingSettings

LONG = 480  # tokens of the request the others arrive during (the tiny model makes ~1 ms a step)


def _metrics(server) -> dict[str, float]:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r"^(videoneva_llm_\w+)\{[^}]*\} (\S+)$", text, re.M):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def _cases(media_dir):
    """Eight requests with different media, lengths, end strings, penalties, seeds and log-probs."""
    clip, still = (media_dir / "clip.mp4").read_bytes(), (media_dir / "still.png").read_bytes()
    out = []
    for i in range(8):
        media = [dict(media_type="video", media_bytes=clip), dict(media_type="image", media_bytes=still), {}][i % 3]
        s = dict(max_tokens=6 + 5 * i, greedy=True, repetition_penalty=1.0 + 0.1 * (i % 3),
                 return_log_probs=i % 4 == 1, end_strings=["circle"] if i == 3 else [])
        if i in (5, 6):
            s.update(greedy=False, temperature=0.8, top_k=30, seed=40 + i)
        out.append((f"Question {i}: what is shown?", media, s))
    return out


def _alone(pipe, text, media, s):
    req = Request(text, media.get("media_type"), None, media.get("media_bytes"), "left")
    sampling = SamplingSettings(**{k: v for k, v in s.items() if k != "end_strings"},
                                end_strings=list(s["end_strings"]))
    return pipe.answer(req, sampling)


def test_concurrent_requests_share_steps_and_answer_as_each_alone(server, client, local_pipeline, media_dir):
    """Eight requests arrive while a long one is generating: they join its batch (the llm's metrics
    count steps with several sequences), their streamed pieces interleave with the long one's, and
    every answer is the one it gets alone, those that reused the cached prefix of a media another
    request brought too. A try where the long answer ended before the others
    started proves nothing and is tried again (up to 3 times)."""
    cases = _cases(media_dir)
    want = [_alone(local_pipeline, *c) for c in cases]
    for attempt in range(3):
        before = _metrics(server)
        started, events, results = threading.Event(), [], [None] * len(cases)
        lock = threading.Lock()

        def long_piece(_text):
            with lock:
                events.append(("long", time.monotonic()))
            started.set()

        long = threading.Thread(target=lambda: results.append(client.answer(
            "Tell a long story.", on_delta=long_piece, max_tokens=LONG, min_tokens=LONG, greedy=True)))
        long.start()
        assert started.wait(120)

        def ask(i):
            text, media, s = cases[i]
            on_delta = None
            if i in (0, 2):  # two of them streamed too
                def on_delta(_t, i=i):
                    with lock:
                        events.append((i, time.monotonic()))
            results[i] = client.answer(text, on_delta=on_delta, insert_media_token="left", **media, **s)
            with lock:
                events.append((f"done{i}", time.monotonic()))

        with ThreadPoolExecutor(len(cases)) as pool:
            list(pool.map(ask, range(len(cases))))
        long.join(120)
        order = [e for e, _ in events]
        if order.index("done0") < len(order) - 1 - order[::-1].index("long") or attempt == 2:
            break  # the long answer was still streaming when request 0 finished
    for got, exp in zip(results, want):
        assert got.token_ids == exp.token_ids and got.finish_reason == exp.finish_reason
        if exp.logprobs is not None:
            np.testing.assert_allclose(got.logprobs, exp.logprobs, rtol=1e-4, atol=1e-4)
    first0 = order.index(0)
    assert "long" in order[first0:], "pieces of two requests interleave"
    after = _metrics(server)
    steps = after["videoneva_llm_steps_total"] - before.get("videoneva_llm_steps_total", 0)
    seqs = after["videoneva_llm_step_sequences_total"] - before.get("videoneva_llm_step_sequences_total", 0)
    assert seqs > steps > 0, "some decode steps carried more than one sequence"
    hits = after["videoneva_llm_prefix_hits_total"] - before.get("videoneva_llm_prefix_hits_total", 0)
    assert hits > 0, "questions about the same media reused its prefix (and still answered as alone)"


def _drop_after_first_piece(server, text: str) -> None:
    """A streamed request, generating until its client drops the stream after the first piece."""
    import tritonclient.grpc as grpcclient

    from videoneva.serving.client import Client

    first = threading.Event()
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    raw.start_stream(callback=lambda result, error: first.set())
    inputs = []
    for name, arr in Client.inputs(text, stream=True, max_tokens=LONG, min_tokens=LONG, greedy=True).items():
        i = grpcclient.InferInput(name, list(arr.shape), "BYTES" if arr.dtype == object else
                                  {"bool": "BOOL", "int32": "INT32"}[arr.dtype.name])
        i.set_data_from_numpy(arr)
        inputs.append(i)
    raw.async_stream_infer("videoneva", inputs)
    assert first.wait(120)  # the request is generating: drop it
    raw.stop_stream(cancel_requests=True)
    raw.close()


def _wait_for(server, ok, timeout: float = 120.0) -> dict[str, float]:
    """The llm's metrics once ok(metrics) holds (they are updated as the executor ends requests)."""
    deadline = time.monotonic() + timeout
    while True:
        now = _metrics(server)
        if ok(now) or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def test_cancelled_requests_leave_the_batch_and_the_others_finish(server, client, media_dir):
    """Streamed requests whose clients drop their streams mid-generation are cancelled in the llm's
    batch (the cancel counter rises, no sequence stays active) while requests around them finish.
    More are cancelled than the entry model has threads: each cancel frees its thread."""
    before = _metrics(server)
    n = 2 * 8 + 1  # the session server's videoneva_instances × videoneva_concurrency, and one more
    with ThreadPoolExecutor(4) as pool:
        others = [pool.submit(client.answer, f"Other {k}?", max_tokens=24, min_tokens=24, greedy=True) for k in range(4)]
        for k in range(n):
            _drop_after_first_piece(server, f"Go on and on, {k}.")
        assert all(len(f.result(120).token_ids) == 24 for f in others)
    cancelled = before.get("videoneva_llm_cancelled_total", 0) + n
    now = _wait_for(server, lambda m: m["videoneva_llm_cancelled_total"] >= cancelled and
                    m["videoneva_llm_active_sequences"] == 0)
    assert now["videoneva_llm_cancelled_total"] == cancelled, now
    assert now["videoneva_llm_active_sequences"] == 0 and now["videoneva_llm_kv_tokens_used"] == 0
    assert now["videoneva_llm_kv_tokens_free"] > 0
    assert client.answer("Still fine?", max_tokens=4, greedy=True).token_ids


def test_a_refused_llm_request_ends_its_stream_with_the_error_output(server, client):
    """A request the llm refuses gets one final response whose `error` output names the problem (a
    Triton error response would never reach a BLS caller); the server answers the next request."""
    import queue

    import tritonclient.grpc as grpcclient

    got: queue.Queue = queue.Queue()
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    raw.start_stream(callback=lambda result, error: got.put((result, error)))
    ids = grpcclient.InferInput("input_ids", [3], "INT32")
    ids.set_data_from_numpy(np.array([1, 2, 3], np.int32))
    raw.async_stream_infer("llm", [ids], enable_empty_final_response=True)
    result, error = got.get(timeout=120)
    raw.stop_stream()
    raw.close()
    assert error is None
    assert "input_ids and sampling are required" in result.as_numpy("error").reshape(-1)[0].decode()
    assert client.answer("Still fine?", max_tokens=4, greedy=True).token_ids
