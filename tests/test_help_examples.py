"""Every command's --help starts with an example that runs as written from the repository's root:
all of them, in order, for real (serve in the background for bench, the judge on loopback)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cli_run import Judge, start_serve
from videoneva.cli import COMMANDS, EX, EXAMPLES, main

pytest.importorskip("tritonclient.grpc", reason="the serve extra (tritonclient, nvidia-pytriton) is not installed")

ROOT = Path(__file__).resolve().parents[1]


def test_each_help_and_the_top_level_help_start_with_the_example(capsys):
    assert set(EXAMPLES) == set(COMMANDS)
    for name in COMMANDS:
        try:
            assert main([name, "--help"]) == 0
        except SystemExit as exc:  # argparse's --help (judge)
            assert exc.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"example (from the repository's root):\n  {EXAMPLES[name]}\n"), (name, out[:300])
    assert main(["--help"]) == 0
    assert EXAMPLES["build"] in capsys.readouterr().out


def test_the_examples_run_as_written(tmp_path):
    from videoneva.serving.server import free_port

    ports = {8001: free_port(), 8000: free_port(), 8002: free_port()}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "NVIDIA_API_KEY": "nvapi-test"}
    server = None
    with Judge() as judge:
        try:
            for name, example in EXAMPLES.items():  # in the order each needs the ones before it
                cmd = example.replace(EX, str(tmp_path)).replace(":8001", f":{ports[8001]}")
                if name == "serve":
                    server = start_serve(cmd, ports, ROOT, env)
                    continue
                if name == "judge":
                    cmd += f" --api-base {judge.url}"
                done = subprocess.run(cmd, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
                assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        finally:
            if server is not None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(60)
    assert (tmp_path / "engine").is_dir() and (tmp_path / "run" / "final").is_dir() and (tmp_path / "answers").is_dir()
    assert (tmp_path / "reviews.jsonl").read_text().count("\n") == (tmp_path / "answers.jsonl").read_text().count("\n")
