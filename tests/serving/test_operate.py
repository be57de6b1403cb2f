"""tritonserver discovery order and the checks on extra tritonserver flags (no server started)."""
from __future__ import annotations

import os

import pytest

from videoneva.errors import ConfigError
from videoneva.serving.operate import check_extra_args
from videoneva.serving.server import find_tritonserver


def test_a_tritonserver_on_path_wins_over_the_wheels(tmp_path, monkeypatch):
    monkeypatch.delenv("VIDEONEVA_TRITONSERVER", raising=False)
    wheel = find_tritonserver()
    assert "pytriton" in str(wheel)
    container = tmp_path / "opt" / "tritonserver" / "bin" / "tritonserver"  # as a Triton container lays it out
    container.parent.mkdir(parents=True)
    container.write_text("#!/bin/sh\n")
    container.chmod(0o755)
    monkeypatch.setenv("PATH", f"{container.parent}{os.pathsep}{os.environ['PATH']}")
    assert find_tritonserver() == container
    monkeypatch.setenv("VIDEONEVA_TRITONSERVER", str(wheel))
    assert find_tritonserver() == wheel


def test_extra_flags_pass_and_flags_serve_sets_are_refused():
    args = ["--grpc-use-ssl=true", "--grpc-server-cert", "/c/s.crt", "--http-restricted-api=model-repository:k=v"]
    assert check_extra_args(args) == args
    with pytest.raises(ConfigError, match="--grpc-port is set by videoneva serve itself; set grpc_port= instead"):
        check_extra_args(["--grpc-port=9000"])
    with pytest.raises(ConfigError, match="--model-control-mode is set by videoneva serve"):
        check_extra_args(["--model-control-mode", "explicit"])
    with pytest.raises(ConfigError, match="shm-region-prefix-name"):
        check_extra_args(["--backend-config=python,shm-region-prefix-name=x"])
    with pytest.raises(ConfigError, match="'stray' is neither"):
        check_extra_args(["--id=a", "stray"])
