"""Production readiness over Triton, on a plain transformers Llava checkpoint (4096-context Llama, Unigram
tokenizer) built with the defaults and served by `videoneva serve` as operators run it:
every good line answered and every bad one flagged with the server still ready, extra tritonserver flags
passed through, and a dead python-backend stub turning readiness false (then the server exits)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from plain_llava import good_and_bad_lines, make_plain_llava

from videoneva.cli import main as cli
from videoneva.serving import operate

START_DEADLINE = 3 * 240 + 60  # startup_timeout x (1 + startup_retries) and some


def _get(url: str):
    """(HTTP status, body) of a GET; (None, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, OSError) as exc:
        return None, str(exc)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(serve process, grpc url, http url, media dir) of `videoneva serve` on the plain checkpoint's default build."""
    d = tmp_path_factory.mktemp("plain")
    engine = d / "engine"
    assert cli(["build", f"checkpoint={make_plain_llava(d / 'llava-4k')}", f"output={engine}"]) == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "videoneva.cli", "serve", f"engine_dir={engine}", "grpc_port=0", "http_port=0",
         "metrics_port=0", "threads=1", "startup_timeout=240", "startup_retries=2",
         "tritonserver_args=--id=videoneva-proof --log-info=true"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ready, deadline = None, time.monotonic() + START_DEADLINE
        while ready is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "videoneva serve: ready" in line:
                ready = line
        assert ready, "the server never reported ready"
        yield proc, re.search(r"grpc=(\S+)", ready).group(1), re.search(r"http=(\S+)", ready).group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_remote_infer_answers_good_lines_flags_bad_ones_and_the_server_stays_ready(served, media_dir, prompt_file,
                                                                                   tmp_path, capsys):
    _, grpc, http = served
    lines, good, bad = good_and_bad_lines()
    out = tmp_path / "answers.jsonl"
    rc = cli(["infer", f"server_url={grpc}", f"prompt_file={prompt_file(lines)}", f"output_file={out}",
              f"inference.media_base_path={media_dir}", "inference.tokens_to_generate=12",
              "inference.insert_media_token=right", "print_answers=false", "concurrency=2"])
    assert rc == 1
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == len(lines)
    assert {r.get("question_id") for r in recs if "error" not in r} == good
    assert {r.get("question_id") for r in recs if "error" in r} == bad
    assert all("internal error" not in r.get("error", "") for r in recs)
    assert f"{len(bad)} of {len(lines)} lines failed" in capsys.readouterr().err
    assert _get(f"{http}/v2/health/ready")[0] == 200
    status, body = _get(f"{http}/v2")  # server metadata: --id came through tritonserver_args
    assert status == 200 and json.loads(body)["name"] == "videoneva-proof"


def _tritonserver_pid(serve_pid: int) -> int:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fields = operate.proc_stat(int(pid))
        if fields is not None and int(fields[1]) == serve_pid:
            try:
                if open(f"/proc/{pid}/comm").read().strip() == "tritonserver":
                    return int(pid)
            except OSError:
                continue
    raise AssertionError(f"no tritonserver child of pid {serve_pid}")


def test_a_dead_stub_turns_readiness_false_and_the_server_exits(served):
    """Runs last in this module: it ends the server."""
    proc, _, http = served
    assert _get(f"{http}/v2/health/ready")[0] == 200
    server_pid = _tritonserver_pid(proc.pid)
    stubs = operate.stub_processes(server_pid)
    assert {"videoneva", "preprocess", "vision_encoder", "llm"} <= {m for m, _ in stubs.values()}
    victim = next(pid for pid, (model, _) in stubs.items() if model == "llm")
    os.kill(victim, signal.SIGKILL)
    deadline, ready = time.monotonic() + 120, True
    while ready and time.monotonic() < deadline:
        ready = _get(f"{http}/v2/health/ready")[0] == 200
        if ready:
            time.sleep(0.2)  # polling the condition; the deadline is what bounds the wait
    assert not ready, "readiness stayed true after a stub died"
    assert proc.wait(120) == 1
    said = proc.stdout.read()
    assert "python-backend stub of model(s) llm died" in said
    assert not list(operate.group_members(server_pid)), "processes of the server were left behind"
