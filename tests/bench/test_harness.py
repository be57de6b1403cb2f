"""`videoneva bench` against a live tritonserver: the report's structure, errors counted, outputs agree with in-process."""
from __future__ import annotations

import json

import pytest

from videoneva.bench.loadgen import GenSettings, Job, PipelineTarget, ServerTarget, run_level
from videoneva.bench.metrics import same_outputs
from videoneva.cli import main as cli

STAT_KEYS = {"mean", "p50", "p90", "p99", "min", "max", "std", "n", "unit"}


def test_bench_command_report(server, media_dir, tmp_path, prompt_file):
    prompts = prompt_file([{"video": "clip.mp4", "text": "What color is the shape?", "question_id": 0},
                           {"video": "clip.webm", "text": "What is the shape doing?", "question_id": 1}])
    out = tmp_path / "results"
    rc = cli(["bench", f"server_url={server.grpc_url}", f"prompt_file={prompts}", f"media_base_path={media_dir}",
              "concurrency=1,2", "num_requests=3", "tokens_to_generate=4", "ignore_eos=true", "warmup=1",
              "insert_media_token=left",              f"output_dir={out}", "name=smoke", "progress=false"])
    assert rc == 0
    report = json.loads((out / "smoke.json").read_text())
    assert report["command"].startswith("videoneva bench server_url=")
    assert report["config"]["concurrency"] == "1,2" and report["prompts"] == 2
    assert {"cpu", "usable_cpus", "gpu", "load_average"} <= set(report["machine"])
    levels = report["targets"]["triton"]["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 2]
    for lv in levels:
        assert lv["requests"] == 3 and lv["errors"] == 0 and lv["error_samples"] == []
        for metric in ("ttft", "itl", "e2e"):
            assert set(lv[metric]) == STAT_KEYS and lv[metric]["n"] >= 1
            assert 0 < lv[metric]["p50"] <= lv[metric]["p90"] <= lv[metric]["p99"] <= lv[metric]["max"]
        assert lv["ttft"]["p50"] <= lv["e2e"]["p50"]
        assert lv["tokens_per_request"]["min"] == lv["tokens_per_request"]["max"] == 4  # ignore_eos: fixed length
        assert lv["output_tokens"] == 12
        assert lv["requests_per_s"] == pytest.approx(3 / lv["wall_s"])
        assert lv["output_tokens_per_s"] == pytest.approx(12 / lv["wall_s"])
    assert [c["concurrency"] for c in report["targets"]["triton"]["cpu"]] == [1, 2]
    md = (out / "smoke.md").read_text()
    assert "TTFT p50 / p90 / p99 (ms)" in md and "| triton | 2 |" in md and "videoneva bench" in md
    assert sorted(p.name for p in out.glob("smoke_*.png")) == ["smoke_latency_throughput.png", "smoke_ttft_concurrency.png"]
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_requests_are_counted_not_fatal(client, media_dir):
    target = ServerTarget(client, GenSettings(3, ignore_eos=True), media_dir, insert_media_token="left")
    jobs = [Job(0, "What color is the shape?", "video", "clip.mp4"), Job(1, "Describe it.", "video", "truncated.mp4")]
    records, s = run_level(target, jobs, concurrency=2, num_requests=4, progress=False)
    assert (s.requests, s.errors) == (4, 2)
    assert all("truncated" in e or "decode" in e.lower() or "media" in e.lower() for e in s.error_samples)
    assert s.e2e.n == 2 and s.output_tokens == 6


def test_server_and_in_process_pipeline_give_the_same_outputs(client, media_dir, local_pipeline):
    gen = GenSettings(6, ignore_eos=True)
    jobs = [Job(i, q, "video", v) for i, (q, v) in enumerate([("What color is the shape?", "clip.mp4"),
                                                              ("What is the shape doing?", "clip.webm")])]
    remote, _ = run_level(ServerTarget(client, gen, media_dir, insert_media_token="left"), jobs, 2, 2, progress=False)
    local, s = run_level(PipelineTarget(local_pipeline, gen, "left"), jobs, 1, 2, progress=False)
    assert s.errors == 0 and s.ttft is not None and s.itl is not None
    assert same_outputs(remote, local) == 1.0
