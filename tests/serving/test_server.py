"""Against a live tritonserver over gRPC: answers equal the in-process pipeline's, streaming, concurrency,
the feature cache, and bad input that fails only its own request."""
from __future__ import annotations

import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.serving.conftest import MAX_MEDIA_BYTES, MAX_TOKENS
from videoneva import prompts
from videoneva.generation import SamplingSettings
from videoneva.runtime.pipeline import Request
from videoneva.serving.tensors import string_tensor

N_TOKENS = 12


def local_answer(pipe, text, media_type=None, media_bytes=None, media_path=None, n=N_TOKENS):
    sampling = SamplingSettings(max_tokens=n, greedy=True, repetition_penalty=1.0,
                                end_strings=prompts.stop_strings(pipe.settings.template))
    return pipe.answer(Request(text, media_type, media_path, media_bytes, "left"), sampling)


def remote(client, text, n=N_TOKENS, **kw):
    return client.answer(text, max_tokens=n, greedy=True, repetition_penalty=1.0, insert_media_token="left", **kw)


def good_request(client, media_dir):
    out = remote(client, "Is the server still fine?", media_type="video", media_bytes=(media_dir / "clip.mp4").read_bytes())
    assert out.token_ids, out


@pytest.mark.parametrize("name,media_type", [("clip.mp4", "video"), ("clip.webm", "video"), ("still.png", "image")])
def test_greedy_answers_equal_the_in_process_pipeline(client, local_pipeline, media_dir, name, media_type):
    data = (media_dir / name).read_bytes()
    got = remote(client, "What is in it?", media_type=media_type, media_bytes=data)
    want = local_answer(local_pipeline, "What is in it?", media_type, media_bytes=data)
    assert got.token_ids == want.token_ids
    assert got.raw_response == want.raw_response and got.clean_response == want.clean_response
    assert got.prompt == want.prompt
    assert got.media["num_frames"] == want.media["num_frames"]
    assert got.model_id == "tiny-videoneva"


def test_media_path_under_the_server_root_and_text_only(client, local_pipeline):
    got = remote(client, "Describe it.", media_type="video", media_path="clip.mp4")
    want = local_answer(local_pipeline, "Describe it.", "video", media_path="clip.mp4")
    assert got.token_ids == want.token_ids
    got = remote(client, "Just text.")
    want = local_answer(local_pipeline, "Just text.")
    assert got.token_ids == want.token_ids and got.media == {}


def test_streaming_yields_text_before_the_end(client, media_dir):
    pieces, times = [], []

    def on_delta(text):
        pieces.append(text)
        times.append(time.perf_counter())

    out = client.answer("Stream please.", on_delta=on_delta, max_tokens=MAX_TOKENS, min_tokens=MAX_TOKENS // 2,
                        greedy=True, insert_media_token="left", media_type="video",
                        media_bytes=(media_dir / "clip.webm").read_bytes())
    done = time.perf_counter()
    assert len(pieces) >= 2, pieces
    assert times[0] < done
    assert "".join(pieces) == out.raw_response
    assert out.timings["first_token_s"] < out.timings["total_s"]


def test_one_stream_per_thread_and_a_timed_out_request_never_answers_the_next(server, local_pipeline, media_dir):
    """Requests of a thread share one open stream; after a timeout that stream is dropped, so the
    late answer of the timed-out request cannot be taken for the next one."""
    from videoneva.serving import Client
    from videoneva.serving.client import ServerUnavailable

    data = (media_dir / "clip.mp4").read_bytes()
    with Client(server.grpc_url, timeout=120, retries=0) as c:
        first = remote(c, "What is in it?", media_type="video", media_bytes=data)
        stream = c._local.stream
        assert remote(c, "Just text.").token_ids and c._local.stream is stream  # the same stream
        c.timeout = 0.001
        with pytest.raises(ServerUnavailable, match="no final response"):
            remote(c, "What is in it?", media_type="video", media_bytes=data, n=MAX_TOKENS)
        assert c._local.stream is None
        c.timeout = 120
        got = remote(c, "Just text.", n=N_TOKENS)
    assert got.token_ids == local_answer(local_pipeline, "Just text.").token_ids
    assert first.token_ids == local_answer(local_pipeline, "What is in it?", "video", media_bytes=data).token_ids


def test_32_concurrent_requests_all_succeed(client, local_pipeline, media_dir):
    names = ["clip.mp4", "clip.webm", "clip.avi", "still.png"]
    jobs = [(f"Question number {i}?", names[i % 4]) for i in range(32)]

    def ask(job):
        text, name = job
        mt = "image" if name.endswith(".png") else "video"
        return remote(client, text, n=6, media_type=mt, media_bytes=(media_dir / name).read_bytes())

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(ask, jobs))
    assert len(results) == 32
    for (text, name), got in zip(jobs[:4], results[:4]):
        mt = "image" if name.endswith(".png") else "video"
        want = local_answer(local_pipeline, text, mt, media_bytes=(media_dir / name).read_bytes(), n=6)
        assert got.token_ids == want.token_ids


def _metric(server, name):
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    values = [float(m.group(1)) for m in re.finditer(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M)]
    return sum(values) if values else None


def test_a_repeated_video_is_a_cache_hit(client, server, media_dir):
    data = (media_dir / "clip.avi").read_bytes() + b""  # a video no other test sends as bytes first
    hits_before = _metric(server, "videoneva_feature_cache_hits_total") or 0
    first = remote(client, "First question?", media_type="video", media_bytes=data)
    second = remote(client, "A second question?", media_type="video", media_bytes=data)
    assert second.media["cache"] == "hit"
    assert second.media["content_hash"] == first.media["content_hash"]
    assert second.timings["encode_s"] is None and second.timings["decode_s"] is None
    assert _metric(server, "videoneva_feature_cache_hits_total") >= hits_before + 1
    assert _metric(server, "videoneva_feature_cache_bytes") > 0


def test_a_repeat_sends_only_the_digest_and_a_forgotten_one_sends_the_bytes(server, client, media_dir, tmp_path):
    """The client sends media once; later questions carry only its sha256. A digest the server does
    not hold is refused with MEDIA_NOT_CACHED (by name), and the client then sends the bytes."""
    from videoneva.media import media_digest
    from videoneva.media.encode import encode_video, gradient_frames
    from videoneva.serving import Client
    from videoneva.serving.protocol import MEDIA_NOT_CACHED

    fresh = encode_video(gradient_frames(10, 72, 96, seed=77), tmp_path / "fresh.mp4", "h264").read_bytes()
    sent = []
    with Client(server.grpc_url, timeout=120, retries=1) as c:
        send = c._send
        c._send = lambda tensors, *a: sent.append(sorted(tensors)) or send(tensors, *a)
        first = remote(c, "Which colour?", media_type="video", media_bytes=fresh)
        again = remote(c, "Which colour?", media_type="video", media_bytes=fresh)
        assert "media_bytes_input" in sent[0] and "media_digest" not in sent[0]
        assert "media_digest" in sent[1] and "media_bytes_input" not in sent[1]
        assert again.media["cache"] == "hit" and again.token_ids == first.token_ids
        assert media_digest(fresh) in c._seen

    err = _raw_infer(server, [_input(k, string_tensor(v), "BYTES") for k, v in
                              (("text_input", "q?"), ("media_type", "video"), ("media_digest", "ab" * 32))])
    assert err is not None and MEDIA_NOT_CACHED in err and "send media_bytes_input" in err, err
    good_request(client, media_dir)

    other = encode_video(gradient_frames(10, 72, 96, seed=78), tmp_path / "other.mp4", "h264").read_bytes()
    sent.clear()
    with Client(server.grpc_url, timeout=120, retries=1) as c:
        c._seen[media_digest(other)] = None  # as if sent before, but the server never saw it
        send = c._send
        c._send = lambda tensors, *a: sent.append(sorted(tensors)) or send(tensors, *a)
        out = remote(c, "Which colour?", media_type="video", media_bytes=other)
        assert out.media["cache"] == "miss" and out.token_ids
        assert "media_bytes_input" not in sent[0] and "media_bytes_input" in sent[1] and len(sent) == 2


def _raw_infer(server, inputs):
    """Send hand-made tensors (tritonclient directly), return the error text or None."""
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server.grpc_url)
    box, done = {}, threading.Event()

    def cb(result, error):
        if error is not None:
            box["error"] = str(error)
            done.set()
        elif result.as_numpy("result_json") is not None:
            done.set()

    c.start_stream(callback=cb)
    try:
        c.async_stream_infer("videoneva", inputs)
        assert done.wait(60)
    finally:
        c.stop_stream()
        c.close()
    return box.get("error")


def _input(name, arr, dtype):
    import tritonclient.grpc as grpcclient

    i = grpcclient.InferInput(name, list(arr.shape), dtype)
    i.set_data_from_numpy(arr)
    return i


@pytest.mark.parametrize("case,expect", [
    ("corrupt video", r"random\.mp4|decod|video"),
    ("outside the media root", r"outside|\.\."),
    ("too many tokens", rf"max_tokens.*1\.\.{MAX_TOKENS}"),
    ("oversized media", rf"limit is {MAX_MEDIA_BYTES}"),
    ("bad media type", r"media_type"),
])
def test_bad_requests_get_a_clear_error_and_the_server_answers_the_next(client, media_dir, case, expect):
    from videoneva.serving import RequestFailed

    kw = {"corrupt video": dict(media_type="video", media_bytes=(media_dir / "random.mp4").read_bytes()),
          "outside the media root": dict(media_type="video", media_path="../etc/passwd"),
          "too many tokens": dict(media_type="video", media_path="clip.mp4", n=MAX_TOKENS + 1),
          "oversized media": dict(media_type="video", media_bytes=b"\0" * (MAX_MEDIA_BYTES + 1)),
          "bad media type": dict(media_type="audio", media_path="clip.mp4")}[case]
    with pytest.raises(RequestFailed, match=expect):
        remote(client, "Will this fail?", **kw)
    good_request(client, media_dir)


def test_missing_and_mistyped_tensors_are_refused_by_triton(server, client, media_dir):
    media = _input("media_type", np.array([b"video"], dtype=object), "BYTES")
    err = _raw_infer(server, [media])  # no text_input
    assert err and "text_input" in err
    err = _raw_infer(server, [_input("text_input", np.array([1, 2, 3], np.int32), "INT32")])
    assert err and "text_input" in err and ("INT32" in err or "data type" in err.lower())
    err = _raw_infer(server, [_input("text_input", np.array([b"hi"], dtype=object), "BYTES"),
                              _input("no_such_input", np.array([1], np.int32), "INT32")])
    assert err and "no_such_input" in err
    good_request(client, media_dir)


def _stub_pids(srv) -> list[int]:
    """The server's python stubs: the processes of its process group other than tritonserver."""
    import os

    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[2]) == srv.proc.pid and int(pid) != srv.proc.pid:
            pids.append(int(pid))
    return pids


def _stub_of(srv, instance: str) -> int:
    """The pid of one model instance's stub (its command line names the instance, e.g. llm_0_0)."""
    for pid in _stub_pids(srv):
        if instance in open(f"/proc/{pid}/cmdline").read().split("\0"):
            return pid
    raise AssertionError(f"no stub for {instance}")


def test_stalled_stubs_mid_generation_only_delay_the_answer(server, media_dir):
    """The python backend calls a stub "not healthy", for good, when the stub's health thread does
    not run for about a second while the server waits for that stub's execute(). The llm's
    execute() used to last the whole generation; now every model's returns at once and a worker
    thread answers. So the llm stub frozen for 2.5 s mid-generation (CPU starvation), then the
    whole server with its stubs (a paused VM), only delay the answer, and the server goes on.
    (A stall during an execute() call itself, now as short as a copy, is still fatal in Triton
    2.51: docs/triton-python-backend.md.)

    The freeze comes at the first text piece the client gets; the tiny model generates the other
    63 tokens in under 0.1 s, so a slow hop to the client can let the generation end first. Such a
    try proves nothing (no piece came after the thaw) and is tried again, up to TRIES times."""
    import os
    import signal

    from videoneva.serving import Client

    TRIES = 8
    llm = _stub_of(server, "llm_0_0")
    stubs = _stub_pids(server)
    data = (media_dir / "clip.mp4").read_bytes()
    with Client(server.grpc_url, timeout=120, retries=0) as c:
        for freeze, thaw in ((lambda: os.kill(llm, signal.SIGSTOP), lambda: os.kill(llm, signal.SIGCONT)),
                             (lambda: os.killpg(server.proc.pid, signal.SIGSTOP),
                              lambda: os.killpg(server.proc.pid, signal.SIGCONT))):
            spans = []
            while len(spans) < TRIES and not (spans and spans[-1] >= 2.4):
                times, thawed = [], threading.Event()

                def on_delta(_text, times=times, freeze=freeze, thaw=thaw, thawed=thawed):
                    times.append(time.monotonic())
                    if len(times) == 1:  # the first piece: the llm is (most likely) generating the others
                        freeze()
                        threading.Timer(2.5, lambda: (thaw(), thawed.set())).start()

                out = c.answer("Describe the clip.", on_delta=on_delta, max_tokens=MAX_TOKENS, min_tokens=MAX_TOKENS,
                               greedy=True, insert_media_token="left", media_type="video", media_bytes=data)
                assert thawed.wait(10)  # never hand a request to a frozen stub: that is the fatal case
                assert len(out.token_ids) == MAX_TOKENS
                spans.append(times[-1] - times[0])
            assert spans[-1] >= 2.4, f"no try froze the server mid-generation (first to last piece, s: {spans})"
        with ThreadPoolExecutor(8) as pool:  # every instance still answers
            assert all(a.token_ids for a in pool.map(lambda i: remote(c, f"Question {i}?", n=4), range(16)))
    assert server.proc.poll() is None, server.log_tail()
    assert sorted(_stub_pids(server)) == sorted(stubs)


def test_many_streamed_answers_leave_every_stub_alive(server, media_dir):
    """Streaming makes the llm answer the `videoneva` model with a response per token (a decoupled
    BLS call). The stub used to free those responses' numpy arrays in a thread without the GIL,
    which corrupted its heap: with 8 streamed requests in flight a `videoneva` stub died within a
    minute or two (docs/triton-python-backend.md). bls_stream holds the responses until that
    thread is done. (On the session server: a start of its own with 8 instances stalled in CI.)"""
    from videoneva.serving import Client

    names = ["clip.mp4", "clip.webm", "clip.avi", "still.png"]
    data = {n: (media_dir / n).read_bytes() for n in names}

    def ask(c, i):
        name = names[i % 4]
        return c.answer(f"Question {i}?", on_delta=lambda _t: None, max_tokens=8, min_tokens=8, greedy=True,
                        insert_media_token="left", media_type="image" if name.endswith(".png") else "video",
                        media_bytes=data[name])

    stubs = _stub_pids(server)
    with Client(server.grpc_url, timeout=60, retries=0) as c, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: ask(c, i), range(1200)))
    assert all(len(a.token_ids) == 8 for a in answers)
    assert sorted(_stub_pids(server)) == sorted(stubs), "a python stub died"
