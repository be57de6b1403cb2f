"""`videoneva serve`: readable errors before starting, a clean stop on SIGTERM, templates that agree with the code."""
from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from videoneva import prompts
from videoneva.cli import main as cli
from videoneva.errors import ConfigError
from videoneva.generation import SamplingSettings
from videoneva.runtime.pipeline import Request
from videoneva.serving.models import feature_cache, llm, preprocess, videoneva, vision_encoder
from videoneva.serving.protocol import (INPUTS, MEDIA_NOT_CACHED, RequestError, ServerLimits, digest_of,
                                       parse_request)
from videoneva.serving.render import TEMPLATE_DIR, render_repository
from videoneva.serving.tensors import string_tensor


def test_incomplete_engine_directory_is_refused_before_starting(engine_dir, tmp_path, capsys):
    broken = tmp_path / "engine"
    shutil.copytree(engine_dir, broken)
    (broken / "vision" / "vision.onnx").unlink()
    assert cli(["serve", f"engine_dir={broken}", "grpc_port=0", "http_port=0", "metrics_port=0"]) == 2
    err = capsys.readouterr().err
    assert "incomplete engine directory" in err and "vision/vision.onnx" in err


def test_a_taken_port_is_named(engine_dir, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert cli(["serve", f"engine_dir={engine_dir}", f"grpc_port={port}", "http_port=0", "metrics_port=0"]) == 2
    assert f"grpc_port={port}" in capsys.readouterr().err


def test_openai_keys_are_checked_before_starting(engine_dir, monkeypatch):
    from videoneva.config import load_config
    from videoneva.serving.serve import ServeConfig

    with pytest.raises(ConfigError, match="openai_port"):
        load_config(ServeConfig, [f"engine_dir={engine_dir}", "openai_port=-2"])
    monkeypatch.delenv("VIDEONEVA_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="api_key_env=VIDEONEVA_NO_SUCH_KEY"):
        load_config(ServeConfig, [f"engine_dir={engine_dir}", "api_key_env=VIDEONEVA_NO_SUCH_KEY"])
    with pytest.raises(ConfigError, match="prefix_cache_bytes"):
        load_config(ServeConfig, [f"engine_dir={engine_dir}", "prefix_cache_bytes=-1"])
    cfg = load_config(ServeConfig, [f"engine_dir={engine_dir}", "openai_allowed_hosts=[media.example,cdn:8080]"])
    assert cfg.openai_allowed_hosts == ["media.example", "cdn:8080"] and cfg.openai_port == -1


def test_a_taken_openai_port_is_named(engine_dir, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert cli(["serve", f"engine_dir={engine_dir}", f"openai_port={port}", "grpc_port=0", "http_port=0",
                    "metrics_port=0"]) == 2
    assert f"openai_port={port}" in capsys.readouterr().err


def test_vision_batch_smaller_than_a_video_is_refused(engine_dir, capsys):
    assert cli(["serve", f"engine_dir={engine_dir}", "vision_max_batch_frames=2", "grpc_port=0"]) == 2
    assert "vision_max_batch_frames=2" in capsys.readouterr().err


def test_serve_prints_the_endpoint_and_stops_cleanly_on_sigterm(torch_engine_dir, local_pipeline, media_dir, tmp_path):
    """Started with cache_bytes=0 and the torch LLM (one server start for all checks): no cache, so
    answers say so, the client keeps sending the bytes, and a digest alone is refused by name; the
    torch LLM answers as the in-process ONNX Runtime LLM does; the OpenAI API on its own port (with
    a key from api_key_env) answers the same question and stops with the server."""
    env = {**os.environ, "VIDEONEVA_TEST_API_KEY": "k-123"}
    proc = subprocess.Popen([sys.executable, "-m", "videoneva.cli", "serve", f"engine_dir={torch_engine_dir}", "grpc_port=0",
                             "http_port=0", "metrics_port=0", "threads=1", "startup_timeout=240",
                             "startup_retries=2", "cache_bytes=0", "openai_port=0", "api_key_env=VIDEONEVA_TEST_API_KEY"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        ready = None
        deadline = time.monotonic() + 3 * 240 + 30  # a stalled start is restarted
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "videoneva serve: ready" in line:
                ready = line
                break
        assert ready, "the server never reported ready"
        url = re.search(r"grpc=(\S+)", ready).group(1)
        assert url.startswith("127.0.0.1:")
        from videoneva.serving import Client
        from videoneva.serving.client import RequestFailed

        with Client(url, retries=0) as c:
            assert c.ready()
            data = (media_dir / "clip.mp4").read_bytes()
            sent = []
            send = c._send
            c._send = lambda tensors, *a: sent.append(sorted(tensors)) or send(tensors, *a)
            for _ in range(2):
                out = c.answer("Again?", media_type="video", media_bytes=data, max_tokens=2, greedy=True,
                               insert_media_token="left")
                assert out.media["cache"] == "off" and out.timings["encode_s"] is not None
            assert all("media_bytes_input" in t and "media_digest" not in t for t in sent) and len(sent) == 2
            sampling = SamplingSettings(max_tokens=2, greedy=True, repetition_penalty=1.0,
                                        end_strings=prompts.stop_strings(local_pipeline.settings.template))
            want = local_pipeline.answer(Request("Again?", "video", None, data, "left"), sampling)
            got = c.answer("Again?", media_type="video", media_bytes=data, max_tokens=2, greedy=True,
                           repetition_penalty=1.0, insert_media_token="left")
            assert type(local_pipeline.llm).__name__ == "OnnxLanguageModel" and got.token_ids == want.token_ids
            with pytest.raises(RequestFailed, match=f"{MEDIA_NOT_CACHED}.*no feature cache"):
                c._send(Client.inputs("Again?", media_type="video", media_digest=digest_of(data),
                                      insert_media_token="left"), None, "")
            assert c.answer("Still there?", max_tokens=2).token_ids
        openai_url = re.search(r"openai=(\S+)", ready).group(1)
        assert openai_url.startswith("http://127.0.0.1:") and openai_url.endswith("/v1")
        import openai

        oai = openai.OpenAI(base_url=openai_url, api_key="k-123", max_retries=0)
        out = oai.chat.completions.create(
            model="tiny-videoneva", max_tokens=2, temperature=0, extra_body={"repetition_penalty": 1.0},
            messages=[{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(data).decode()}},
                {"type": "text", "text": "Again?"}]}])
        assert out.choices[0].message.content == got.clean_response and out.model_extra["videoneva"]["media"]["cache"] == "off"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        rest = proc.stdout.read()
        assert "stopping" in rest
        with Client(url, retries=0, timeout=5) as c:
            assert not c.ready()
        with pytest.raises(openai.APIConnectionError):
            oai.models.list()
    finally:
        if proc.poll() is None:
            proc.kill()


def _io_names(text: str, kind: str) -> dict[str, str]:
    blocks = re.findall(kind + r" \[\s*\{(.*?)\}\s*\]", text, re.S)
    return {re.search(r'name: "(\w+)"', b).group(1): re.search(r"data_type: (\w+)", b).group(1) for b in blocks}


MODELS = {"videoneva": videoneva, "feature_cache": feature_cache, "preprocess": preprocess,
          "vision_encoder": vision_encoder, "llm": llm}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_templates_declare_the_tensors_and_handler_of_their_module(name):
    """config.pbtxt and the handler module agree on every tensor name and type, the handler and decoupling."""
    module = MODELS[name]
    text = (TEMPLATE_DIR / name / "config.pbtxt").read_text()
    assert _io_names(text, "input") == {k: v[0] for k, v in module.INPUTS.items()}
    assert _io_names(text, "output") == {k: v[0] for k, v in module.OUTPUTS.items()}
    assert f'string_value: "{module.__name__}"' in text
    assert ("decoupled: true" in text) == module.DECOUPLED


def test_the_repository_is_exactly_the_handler_modules():
    from videoneva.serving.render import template_models

    assert set(template_models()) == set(MODELS)
    assert (TEMPLATE_DIR / "model.py").is_file()


def test_rendering_is_strict(tmp_path):
    with pytest.raises(ConfigError, match="no value for template placeholder"):
        render_repository(tmp_path / "a", {"feature_cache": {}})
    with pytest.raises(ConfigError, match="unknown template key"):
        render_repository(tmp_path / "b", {"feature_cache": {"cache_bytes": 1, "typo": 1}})
    with pytest.raises(ConfigError, match="no template for model"):
        render_repository(tmp_path / "c", {"nope": {}})
    out = render_repository(tmp_path / "d", {"feature_cache": {"cache_bytes": 1}})
    assert (out / "feature_cache" / "1" / "model.py").read_text() == (TEMPLATE_DIR / "model.py").read_text()


def _req(**kw):
    t = {"text_input": string_tensor("hi")}
    t.update(kw)
    return t


@pytest.mark.parametrize("inputs,match", [
    (_req(text_input=string_tensor("  ")), "non-empty"),
    (_req(max_tokens=np.array([0], np.int32)), "out of range"),
    (_req(media_type=string_tensor("video")), "none of media_bytes_input, media_path, media_digest"),
    (_req(media_type=string_tensor("video"), media_digest=string_tensor("ABC")), "64 lowercase hex"),
    (_req(media_type=string_tensor("video"), media_digest=string_tensor("0" * 64),
          media_path=string_tensor("a.mp4")), "not with media_path"),
    (_req(media_digest=string_tensor("0" * 64)), "media_type"),
    (_req(media_path=string_tensor("a.mp4")), "media_type"),
    (_req(media_type=string_tensor("video"), media_path=string_tensor("a.mp4"),
          media_bytes_input=np.zeros(3, np.uint8)), "not both"),
    (_req(media_type=string_tensor("video"), media_bytes_input=np.zeros(11, np.uint8)), "limit is 10"),
    (_req(top_p=np.array([1.5], np.float32)), "top_p"),
    (_req(temperature=np.array([0.0], np.float32)), "temperature"),
    (_req(insert_media_token=string_tensor("middle")), "insert_media_token"),
    (_req(text_input=np.array([b"\xff\xfe"], dtype=object)), "UTF-8"),
    (_req(text_input=string_tensor("a", "b")), "one string"),
    (_req(messages=string_tensor("[{")), "'messages' is not valid JSON"),
    (_req(messages=string_tensor('[{"role": "user", "content": "a"}]')), "end with an assistant turn"),
    (_req(messages=string_tensor('[{"role": "tool", "content": "a"}]')), "expected role 'user'"),
    (_req(messages=string_tensor('[{"role": "system", "content": "' + "x" * 40 + '"}]')), "with messages.*limit is 32"),
])
def test_parse_request_refuses_bad_values_by_name(inputs, match):
    with pytest.raises(RequestError, match=match):
        parse_request(inputs, ServerLimits(max_tokens_limit=32, max_media_bytes=10, max_text_chars=32))


def test_the_client_digest_is_the_cache_digest():
    from videoneva.media import media_digest

    data = bytes(range(256)) * 3
    assert digest_of(data) == media_digest(data) and len(digest_of(data)) == 64


def test_parse_request_maps_settings():
    r = parse_request(_req(max_tokens=np.array([5], np.int32), greedy=np.array([True]),
                           end_strings=string_tensor("</s>", "STOP"), stream=np.array([True]),
                           num_frames=np.array([3], np.int32), splice_single_frame=string_tensor("last")), ServerLimits())
    assert r.sampling == {"max_tokens": 5, "greedy": True, "end_strings": ["</s>", "STOP"]}
    assert r.stream and r.request.media_type is None
    assert r.request.num_frames == 3 and r.request.splice_single_frame == "last"


def test_a_server_not_ready_in_time_is_restarted_then_named(engine_dir, tmp_path, caplog):
    """A start that does not become ready is retried (startup_retries), then refused naming the models still loading."""
    from videoneva.config import load_config
    from videoneva.serving.serve import ServeConfig, start_server
    from videoneva.serving.server import ServerNotReady

    cfg = load_config(ServeConfig, [f"engine_dir={engine_dir}", "grpc_port=0", "http_port=0", "metrics_port=0",
                                    "startup_timeout=1", "startup_retries=1"])
    with caplog.at_level("WARNING", logger="videoneva.serving.serve"), pytest.raises(ServerNotReady) as exc:
        start_server(cfg, tmp_path)
    assert "not ready after 1 s" in str(exc.value) and "models still loading" in str(exc.value)
    assert any("restarting (1 of 1)" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="startup_retries"):
        load_config(ServeConfig, [f"engine_dir={engine_dir}", "startup_retries=-1"])


def test_a_stalled_start_is_named_before_the_timeout(tmp_path):
    """A python model whose load stops using CPU is reported as a stall after stall_timeout, not startup_timeout."""
    from videoneva.serving.server import ServerNotReady, TritonServer

    model = tmp_path / "repo" / "sleepy"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 0\n'
                                        'input [{ name: "x", data_type: TYPE_FP32, dims: [1] }]\n'
                                        'output [{ name: "y", data_type: TYPE_FP32, dims: [1] }]\n'
                                        'instance_group [{ kind: KIND_CPU, count: 1 }]\n')
    (model / "1" / "model.py").write_text("import time\n\n\nclass TritonPythonModel:\n"
                                          "    def initialize(self, args):\n        time.sleep(3600)\n")
    srv = TritonServer(tmp_path / "repo", grpc_port=0, http_port=0, metrics_port=0, stall_timeout=5)
    try:
        with pytest.raises(ServerNotReady) as exc:
            srv.start(timeout=600)
    finally:
        srv.stop()
    msg = str(exc.value)
    assert re.search(r"stalled: no progress for \d+ s", msg) and "models still loading: sleepy" in msg
    assert not list(Path("/dev/shm").glob(srv.shm_prefix + "*")), "the stopped server's shared memory is left"
    with pytest.raises(ConfigError, match="stall_timeout"):
        from videoneva.config import load_config
        from videoneva.serving.serve import ServeConfig

        load_config(ServeConfig, ["engine_dir=x", "stall_timeout=-1"])


def _python_model(repo: Path, name: str, initialize: str) -> None:
    model = repo / name
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 0\n'
                                        'input [{ name: "x", data_type: TYPE_FP32, dims: [1] }]\n'
                                        'output [{ name: "y", data_type: TYPE_FP32, dims: [1] }]\n'
                                        'instance_group [{ kind: KIND_CPU, count: 1 }]\n')
    (model / "1" / "model.py").write_text(f"import os, signal\n\n\nclass TritonPythonModel:\n"
                                          f"    def initialize(self, args):\n        {initialize}\n")


@pytest.mark.parametrize("initialize, error, said", [
    ("os.kill(os.getppid(), signal.SIGABRT)", "ServerNotReady", "was killed by signal 6"),  # a crash: retried
    ("raise ValueError('no weights here')", "ServeError", "exited with status 1"),          # a failed load: not
])
def test_a_server_that_crashes_while_starting_is_worth_a_restart_and_a_failed_load_is_not(tmp_path, initialize,
                                                                                          error, said):
    from videoneva.serving import server as srv_mod

    _python_model(tmp_path / "repo", "doomed", initialize)
    srv = srv_mod.TritonServer(tmp_path / "repo", grpc_port=0, http_port=0, metrics_port=0)
    try:
        with pytest.raises(srv_mod.ServeError) as exc:
            srv.start(timeout=600)
    finally:
        srv.stop()
    assert type(exc.value).__name__ == error and said in str(exc.value), str(exc.value)
