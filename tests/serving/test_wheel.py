"""The package serves from a wheel: built from this checkout, installed into a fresh virtual
environment, and run from outside the source tree, it renders the model repository from the
templates it ships and answers over gRPC."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import sysconfig
import time
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    """A venv holding only the built wheel; the dependencies come from this environment's site-packages,
    added as a plain path (so its editable install of videoneva is not processed)."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(work / "dist"), str(ROOT)], check=True, capture_output=True)
    (wheel,) = (work / "dist").glob("videoneva-*.whl")
    env_dir = work / "env"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    return env_dir


def test_the_wheel_ships_the_templates_and_serves(wheel_env, engine_dir, media_dir, tmp_path):
    py = wheel_env / "bin" / "python"
    where = subprocess.run([str(py), "-c", "import videoneva.serving.render as r; print(r.__file__); print(r.TEMPLATE_DIR)"],
                           cwd=tmp_path, check=True, capture_output=True, text=True).stdout.split()
    assert all(str(wheel_env) in w for w in where), where  # the installed copy, not this checkout
    assert (Path(where[1]) / "videoneva" / "config.pbtxt").is_file() and (Path(where[1]) / "model.py").is_file()

    proc = subprocess.Popen([str(wheel_env / "bin" / "videoneva"), "serve", f"engine_dir={engine_dir}", "grpc_port=0",
                             "http_port=0", "metrics_port=0", "threads=1", "startup_timeout=240", "startup_retries=2",
                             f"model_repository={tmp_path / 'repo'}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PATH": f"{wheel_env / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)})
    try:
        ready, lines = None, []
        deadline = time.monotonic() + 3 * 240 + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "videoneva serve: ready" in line:
                ready = line
                break
        assert ready, "".join(lines[-40:])
        bootstrap = (tmp_path / "repo" / "llm" / "1" / "model.py").read_text()
        assert "videoneva.serving.triton_model" in bootstrap
        from videoneva.serving import Client

        with Client(re.search(r"grpc=(\S+)", ready).group(1), retries=0, timeout=120) as c:
            out = c.answer("What is in it?", media_type="video", media_bytes=(media_dir / "clip.mp4").read_bytes(),
                           max_tokens=4, greedy=True, insert_media_token="left")
        assert out.token_ids and out.media["num_frames"] == 4
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
