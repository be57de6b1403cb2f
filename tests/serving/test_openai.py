"""The OpenAI-compatible API over the session's live tritonserver, with the official `openai` SDK as the client.

The frontend runs in this process on a free loopback port, in front of the session server's gRPC
endpoint (what `videoneva serve openai_port=` starts; the CLI test starts it that way once)."""
from __future__ import annotations

import base64
import http.server
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import httpx
import pytest

from tests.serving.conftest import MAX_MEDIA_BYTES

openai = pytest.importorskip("openai", reason="the openai SDK (dev extra) is not installed")

KEY = "test-key-0123456789"
N = 8


def data_url(path, mime) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def video_msg(url: str, text: str = "What is in it?", kind: str = "video_url") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, {"type": kind, kind: {"url": url}}]}]


@pytest.fixture(scope="module")
def remote_media(media_dir):
    """A loopback stand-in for a remote media host (an allow-listed one, for the fetch path)."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(media_dir))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def api(server, media_dir, remote_media):
    from videoneva.serving.openai_api import OpenAIServer, OpenAISettings
    from videoneva.serving.openai_media import MediaPolicy

    settings = OpenAISettings(server.grpc_url, "tiny-videoneva", MediaPolicy(media_dir, {remote_media}, MAX_MEDIA_BYTES),
                              api_key=KEY, timeout=120)
    with OpenAIServer(settings, "127.0.0.1", 0) as front:
        yield front
        # the server stayed ready through every request of this module, refused ones included
        assert httpx.get(front.url + "/health").json()["status"] == "ready"


@pytest.fixture(scope="module")
def oai(api):
    return openai.OpenAI(base_url=api.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def ask(oai, messages, **kw):
    return oai.chat.completions.create(model="tiny-videoneva", messages=messages, max_tokens=N, temperature=0, **kw)


def test_a_video_data_url_streamed_and_not_equals_grpc(oai, client, media_dir):
    """Greedy: the same question over OpenAI HTTP and over gRPC gives the same answer, usage and media."""
    url = data_url(media_dir / "clip.mp4", "video/mp4")
    out = ask(oai, video_msg(url))
    grpc = client.answer("What is in it?", media_type="video", media_bytes=(media_dir / "clip.mp4").read_bytes(),
                         max_tokens=N, greedy=True, insert_media_token="right")
    choice = out.choices[0]
    assert choice.message.content == grpc.clean_response and choice.finish_reason == grpc.finish_reason
    assert out.usage.prompt_tokens == grpc.usage["prompt_tokens"] > grpc.usage["media_tokens"] == 4 * 64
    assert out.usage.completion_tokens == grpc.usage["completion_tokens"] and out.model == "tiny-videoneva"
    ext = out.model_extra["videoneva"]
    assert ext["media"]["num_frames"] == 4 and ext["media"]["cache"] in ("hit", "miss") and ext["media_tokens"] == 256

    chunks = list(ask(oai, video_msg(url), stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == grpc.raw_response and chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [grpc.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == grpc.usage["completion_tokens"]
    assert all(c.usage is None for c in chunks[:-1])


def test_an_image_a_conversation_and_frames_from_the_extra_body(oai, client, media_dir):
    png = data_url(media_dir / "still.png", "image/png")
    out = ask(oai, video_msg(png, "Describe it.", "image_url"))
    assert out.model_extra["videoneva"]["media"]["num_frames"] == 1 and out.usage.completion_tokens > 0
    history = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello"},
               {"role": "assistant", "content": "Hi."}]
    mp4 = data_url(media_dir / "clip.mp4", "video/mp4")
    out = ask(oai, [*history, *video_msg(mp4)], extra_body={"num_frames": 2})
    grpc = client.answer("What is in it?", messages=history, media_type="video", num_frames=2, max_tokens=N, greedy=True,
                         media_bytes=(media_dir / "clip.mp4").read_bytes(), insert_media_token="right")
    assert out.choices[0].message.content == grpc.clean_response and out.usage.prompt_tokens == grpc.usage["prompt_tokens"]
    assert out.model_extra["videoneva"]["media"]["num_frames"] == 2
    with pytest.raises(openai.BadRequestError, match="num_frames"):
        ask(oai, video_msg(mp4), extra_body={"num_frames": 1000})


def test_log_probs_of_the_chosen_tokens(oai, media_dir):
    out = ask(oai, [{"role": "user", "content": "Say something."}], logprobs=True)
    lp = out.choices[0].logprobs.content
    assert len(lp) == out.usage.completion_tokens and all(t.logprob <= 0 and t.top_logprobs == [] for t in lp)
    with pytest.raises(openai.BadRequestError, match="top_logprobs=2"):
        ask(oai, [{"role": "user", "content": "x"}], logprobs=True, top_logprobs=2)


def test_paths_under_the_media_root_and_outside_it(oai, media_dir):
    for url in ("clip.mp4", f"file://{media_dir / 'clip.mp4'}"):
        assert ask(oai, video_msg(url)).model_extra["videoneva"]["media"]["num_frames"] == 4
    for url in ("../outside.mp4", "file:///etc/hostname", "sub/../../x.mp4"):
        with pytest.raises(openai.BadRequestError, match="outside the server's media root"):
            ask(oai, video_msg(url))


def test_corrupt_media_is_a_bad_request(oai, media_dir):
    for name in ("random.mp4", "truncated.mp4"):
        with pytest.raises(openai.BadRequestError, match="not a readable video container"):
            ask(oai, video_msg(data_url(media_dir / name, "video/mp4")))
    with pytest.raises(openai.BadRequestError, match="not valid base64"):
        ask(oai, video_msg("data:video/mp4;base64,@@@@"))


def test_remote_media_only_from_allowed_hosts(oai, remote_media):
    with pytest.raises(openai.BadRequestError, match="not allowed"):
        ask(oai, video_msg("http://169.254.169.254/latest/meta-data"))
    out = ask(oai, video_msg(f"http://{remote_media}/clip.mp4"))
    assert out.model_extra["videoneva"]["media"]["num_frames"] == 4
    with pytest.raises(openai.BadRequestError, match="HTTP 404"):
        ask(oai, video_msg(f"http://{remote_media}/missing.mp4"))


def test_keys_models_and_limits(api, oai, media_dir):
    wrong = openai.OpenAI(base_url=api.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="wrong API key"):
        ask(wrong, [{"role": "user", "content": "hi"}])
    r = httpx.post(api.url + "/v1/chat/completions", json={"model": "tiny-videoneva", "messages": []})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert [m.id for m in oai.models.list()] == ["tiny-videoneva"]
    with pytest.raises(openai.NotFoundError, match="'other' not found"):
        oai.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
    big = "data:video/mp4;base64," + base64.b64encode(b"\0" * (MAX_MEDIA_BYTES + 3000)).decode()
    with pytest.raises(openai.APIStatusError) as exc:  # the decoded media over max_media_bytes
        ask(oai, video_msg(big))
    assert exc.value.status_code == 413 and "max_media_bytes" in exc.value.message
    with pytest.raises(openai.APIStatusError) as exc:  # the body over the limit, refused by its Content-Length
        ask(oai, [{"role": "user", "content": "x" * (MAX_MEDIA_BYTES * 2 + 2**20)}])
    assert exc.value.status_code == 413


@pytest.mark.parametrize("kw,match", [
    ({"n": 2}, "n=2"), ({"frequency_penalty": 0.5}, "repetition_penalty"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools: this server does not take"),
    ({"extra_body": {"splice_single_frame": "centre"}}, "splice_single_frame"),
])
def test_unsupported_settings_are_refused_by_name(oai, kw, match):
    with pytest.raises(openai.BadRequestError, match=match):
        ask(oai, [{"role": "user", "content": "hi"}], **kw)


def test_two_media_and_a_trailing_assistant_turn_are_refused(oai, media_dir):
    url = data_url(media_dir / "still.png", "image/png")
    two = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "image_url", "image_url": {"url": url}}]}]
    with pytest.raises(openai.BadRequestError, match="2 media parts"):
        ask(oai, two)
    with pytest.raises(openai.BadRequestError, match="last message must be the user's"):
        ask(oai, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])


def test_sixteen_concurrent_requests(api, oai, media_dir):
    url = data_url(media_dir / "clip.webm", "video/webm")
    with ThreadPoolExecutor(16) as pool:
        outs = list(pool.map(lambda i: ask(oai, video_msg(url, f"Question {i % 4}?")), range(16)))
    by_question = {}
    for i, out in enumerate(outs):
        by_question.setdefault(i % 4, set()).add(out.choices[0].message.content)
        assert out.usage.completion_tokens > 0
    assert all(len(v) == 1 for v in by_question.values())  # greedy: one answer per question
    assert httpx.get(api.url + "/health").status_code == 200


def test_the_health_endpoints_the_helm_chart_probes_answer(server):
    """deploy/helm's startup, readiness and liveness probes ask Triton's HTTP port these paths."""
    from pathlib import Path

    chart = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "videoneva" / "templates" / "deployment.yaml"
    paths = set(re.findall(r"path: (/v2/health/\w+)", chart.read_text()))
    assert paths == {"/v2/health/ready", "/v2/health/live"}
    for path in paths:
        assert httpx.get(f"http://{server.host}:{server.http_port}{path}").status_code == 200


def test_not_ready_is_503(media_dir):
    from videoneva.serving.openai_api import OpenAIServer, OpenAISettings
    from videoneva.serving.server import free_port

    settings = OpenAISettings(f"127.0.0.1:{free_port()}", "m", timeout=5)
    with OpenAIServer(settings) as front:
        r = httpx.get(front.url + "/health")
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
        c = openai.OpenAI(base_url=front.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as exc:
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert exc.value.status_code == 503


def test_a_client_that_disconnects_mid_stream_cancels_its_request(api, server):
    """Closing a streamed completion after its first piece cancels the request in the llm's batch."""
    from tests.serving.conftest import MAX_TOKENS
    from tests.serving.test_batching_server import _metrics, _wait_for

    before = _metrics(server).get("videoneva_llm_cancelled_total", 0)
    body = {"model": "tiny-videoneva", "stream": True, "max_tokens": MAX_TOKENS - 32, "min_tokens": MAX_TOKENS - 32,
            "temperature": 0, "messages": [{"role": "user", "content": "Go on and on."}]}
    with httpx.stream("POST", api.url + "/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if '"content":' in line and '"content":""' not in line.replace(" ", ""):
                break  # a piece of the answer: hang up
    now = _wait_for(server, lambda m: m["videoneva_llm_cancelled_total"] > before and
                    m["videoneva_llm_active_sequences"] == 0)
    assert now["videoneva_llm_cancelled_total"] == before + 1, now
    assert httpx.get(api.url + "/health").json()["status"] == "ready"
