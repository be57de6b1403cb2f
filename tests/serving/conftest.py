"""A real tritonserver (the nvidia-pytriton wheel's) on a free loopback port, one per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc", reason="the serve extra (tritonclient, nvidia-pytriton) is not installed")

# Small limits so the oversized-request test stays small.
MAX_MEDIA_BYTES = 300_000
MAX_TOKENS = 512


def _build(tmp_path_factory, checkpoint, name: str, *extra: str) -> Path:
    from engine_build.build import main as build_main

    out = tmp_path_factory.mktemp("engines") / name
    assert build_main([f"checkpoint={checkpoint}", f"output={out}", "max_input_len=512",
                       "max_output_len=128", "max_batch_size=4", *extra]) == 0
    return out


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory, tiny_checkpoint) -> Path:
    """The session server's engine: the ONNX Runtime LLM, the fast CPU path `make demo` serves."""
    return _build(tmp_path_factory, tiny_checkpoint, "tiny", "llm.backend=onnx")


@pytest.fixture(scope="session")
def torch_engine_dir(tmp_path_factory, tiny_checkpoint) -> Path:
    """The same model with the torch LLM (the default build), served by the CLI test."""
    return _build(tmp_path_factory, tiny_checkpoint, "tiny-torch")


def start(engine: Path, media_root: Path, work: Path, *extra: str):
    from videoneva.config import load_config
    from videoneva.serving.serve import ServeConfig, start_server

    cfg = load_config(ServeConfig, [f"engine_dir={engine}", f"media_root={media_root}", "grpc_port=0", "http_port=0",
                                    "metrics_port=0", "threads=1", f"max_media_bytes={MAX_MEDIA_BYTES}",
                                    f"max_tokens_limit={MAX_TOKENS}", f"inference.tokens_to_generate={MAX_TOKENS}",
                                    "startup_timeout=240", "startup_retries=2", *extra])
    work.mkdir(parents=True, exist_ok=True)
    return start_server(cfg, work)


@pytest.fixture(scope="session")
def server(engine_dir, media_dir, tmp_path_factory):
    srv = start(engine_dir, media_dir, tmp_path_factory.mktemp("triton"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    from videoneva.serving import Client

    with Client(server.grpc_url, timeout=120, retries=1) as c:
        yield c


@pytest.fixture(scope="session")
def local_pipeline(engine_dir, media_dir):
    """The in-process pipeline on the same engine directory (what the server must agree with)."""
    from videoneva.config import InferConfig, load_config
    from videoneva.runtime.engine import pipeline_from_engine_dir

    cfg = load_config(InferConfig, [f"engine_dir={engine_dir}", f"inference.media_base_path={media_dir}", "device=cpu"])
    return pipeline_from_engine_dir(engine_dir, cfg)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that used a live server gets that server's state and last log lines in its report
    (a server that died shows why)."""
    outcome = yield
    report = outcome.get_result()
    srv = item.funcargs.get("server") if hasattr(item, "funcargs") else None
    if report.failed and srv is not None and getattr(srv, "proc", None) is not None:
        code = srv.proc.poll()
        state = "running" if code is None else f"exited with code {code}"
        report.sections.append(("tritonserver", f"{state}; last lines of {srv.log_file}:\n{srv.log_tail(60)}"))
