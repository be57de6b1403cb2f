"""`videoneva infer server_url=…`: the seed's job against a live server, failures named, resume after a crash."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from tests.serving.conftest import start
from videoneva.cli import main as cli


def _args(url, prompts, out, media_dir, *extra):
    return ["infer", f"server_url={url}", f"prompt_file={prompts}", f"output_file={out}",
            f"inference.media_base_path={media_dir}", "inference.greedy=true", "inference.tokens_to_generate=8",
            "inference.insert_media_token=left", "print_answers=false", "retries=1", *extra]


def _records(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_remote_infer_matches_in_process_and_names_bad_lines(server, engine_dir, media_dir, prompt_file, tmp_path, capsys):
    lines = [{"video": "clip.mp4", "text": "What happens?", "question_id": 1},
             {"image": "still.png", "text": "What is shown?", "question_id": 2},
             {"video": "clip.webm", "text": "Describe it.", "question_id": 3},
             {"video": "missing.mp4", "text": "Where is it?", "question_id": 4},
             {"video": "../outside.mp4", "text": "Escape?", "question_id": 5},
             {"video": "truncated.mp4", "text": "Broken?", "question_id": 6},
             "{not json",
             {"video": "clip.avi", "text": "Last one.", "question_id": 8}]
    prompts = prompt_file(lines)
    remote_out, local_out = tmp_path / "remote.jsonl", tmp_path / "local.jsonl"
    assert cli(_args(server.grpc_url, prompts, remote_out, media_dir, "concurrency=3")) == 1
    err = capsys.readouterr().err
    for qid in (4, 5, 6):
        assert f"question_id={qid}:" in err
    assert "line 7" in err
    assert cli(["infer", f"engine_dir={engine_dir}", f"prompt_file={prompts}", f"output_file={local_out}",
                f"inference.media_base_path={media_dir}", "inference.greedy=true", "inference.tokens_to_generate=8",
                "inference.insert_media_token=left", "print_answers=false", "device=cpu"]) == 1
    remote = {r.get("question_id"): r for r in _records(remote_out)}
    local = {r.get("question_id"): r for r in _records(local_out)}
    assert len(_records(remote_out)) == len(lines)
    for qid in (1, 2, 3, 8):
        assert "error" not in remote[qid], remote[qid]
        for key in ("prompt", "raw_response", "pred_answer", "full_text"):
            assert remote[qid][key] == local[qid][key], (qid, key)
        assert remote[qid]["model_id"] == "tiny-videoneva"
    for qid in (4, 5, 6):
        assert remote[qid]["error"]
    assert "outside" in remote[5]["error"] or ".." in remote[5]["error"]


def test_server_killed_mid_run_then_resume_finishes_with_nothing_lost(engine_dir, media_dir, prompt_file, tmp_path, capsys):
    lines = [{"video": ["clip.mp4", "clip.webm", "clip.avi"][i % 3], "text": f"Question {i}?", "question_id": i}
             for i in range(30)]
    prompts, out = prompt_file(lines), tmp_path / "answers.jsonl"
    srv = start(engine_dir, media_dir, tmp_path / "first")
    port = srv.grpc_port
    try:
        rc = {}
        job = threading.Thread(target=lambda: rc.setdefault("rc", cli(_args(srv.grpc_url, prompts, out, media_dir,
                                                                            "inference.tokens_to_generate=24"))))
        job.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 3):
            time.sleep(0.05)
        regions = list(Path("/dev/shm").glob(srv.shm_prefix + "*"))
        srv.kill()
        job.join(300)
    finally:
        srv.stop()
    assert regions and not any(r.exists() for r in regions), "a killed server's shared memory is left in /dev/shm"
    assert rc["rc"] == 1
    err = capsys.readouterr().err
    first = _records(out)
    answered = {r["question_id"] for r in first if "error" not in r}
    failed = {r["question_id"] for r in first if "error" in r}
    assert len(answered) >= 3 and failed and answered | failed == set(range(30))
    for qid in failed:
        assert f"question_id={qid}:" in err
    errors = [r["error"] for r in first if "error" in r]
    assert errors and all("no answer after 2 attempts" in e for e in errors[1:]), errors

    srv = start(engine_dir, media_dir, tmp_path / "second", f"grpc_port={port}")
    try:
        assert cli(_args(srv.grpc_url, prompts, out, media_dir, "resume=true", "concurrency=4")) == 0
    finally:
        srv.stop()
    final = _records(out)
    assert sorted(r["question_id"] for r in final) == list(range(30))
    assert not any("error" in r for r in final)
    kept = {r["question_id"]: r["answer_id"] for r in first if "error" not in r}
    assert all({r["question_id"]: r["answer_id"] for r in final}[q] == a for q, a in kept.items())
