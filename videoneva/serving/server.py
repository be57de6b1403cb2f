"""Start, supervise and stop a real `tritonserver` on a rendered model repository (a Triton container's
own server when one is on PATH, else the nvidia-pytriton wheel's).

What the wheel's server needs on CPU (docs/triton-python-backend.md): a backend
directory `python/{libtriton_python.so, triton_python_backend_utils.py, triton_python_backend_stub}`
with the stub for this interpreter's version; LD_LIBRARY_PATH starting with this interpreter's
LIBDIR (else the stub loads the system libpython) and then the wheel's `nvidia_pytriton.libs`;
explicit --grpc-address/--http-address/--metrics-address, since the default is 0.0.0.0.
Supervision (a dead python-backend stub shuts the server down, so readiness turns false and an
orchestrator restarts it) and extra flags: operate.py.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from videoneva.errors import VideoNevaError
from videoneva.serving import operate

log = logging.getLogger(__name__)


# An idle server with its python stubs uses ~0.004 of a core (measured); a loading model ~1.
STALL_CPU_CORES = 0.02


class ServeError(VideoNevaError):
    """The server cannot start (binary missing, port taken, model failed to load) or stopped."""


class ServerNotReady(ServeError):
    """The server did not become ready in time (e.g. a model load stalled) or crashed while starting."""


def _pytriton_dir() -> Optional[Path]:
    try:
        import pytriton  # noqa: F401  (only its files are used)
    except ImportError:
        return None
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def find_tritonserver() -> Path:
    """$VIDEONEVA_TRITONSERVER, then `tritonserver` on PATH (a Triton container's own server, with its
    GPU backends), then the nvidia-pytriton wheel's binary (the CPU development server)."""
    env = os.environ.get("VIDEONEVA_TRITONSERVER")
    candidates = [Path(env)] if env else []
    on_path = shutil.which("tritonserver")
    if on_path:
        candidates.append(Path(on_path))
    pt = _pytriton_dir()
    if pt is not None:
        candidates.append(pt / "bin" / "tritonserver")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise ServeError("tritonserver not found: install the serve extra (`pip install nvidia-pytriton`), put "
                     "tritonserver on PATH, or set VIDEONEVA_TRITONSERVER=/path/to/tritonserver")


def assemble_backend_dir(dst: Path, server: Path) -> Path:
    """A --backend-directory holding the python backend with this interpreter's stub.

    A server from a Triton container (not the wheel) brings its own backends: use those.
    """
    pt = _pytriton_dir()
    if pt is None or not str(server).startswith(str(pt)):
        own = server.parent.parent / "backends"
        if own.is_dir():
            return own
        raise ServeError(f"no backends directory next to {server} (expected {own})")
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = pt / "python_backend_stubs" / ver / "triton_python_backend_stub"
    lib = pt / "backends" / "python"
    if not stub.is_file():
        raise ServeError(f"the nvidia-pytriton wheel has no python backend stub for Python {ver} ({stub})")
    py = dst / "python"
    py.mkdir(parents=True, exist_ok=True)
    for f in (lib / "libtriton_python.so", lib / "triton_python_backend_utils.py", stub):
        shutil.copy2(f, py / f.name)
    return dst


def server_env(server: Path) -> dict:
    """Environment for the server and its python stubs: this interpreter's libraries and environment."""
    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR") or ""]
    pt = _pytriton_dir()
    if pt is not None and str(server).startswith(str(pt)):  # the wheel's libraries for the wheel's server only
        libs.append(str(pt.parent.parent / "nvidia_pytriton.libs"))
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    # The stub embeds Python, which finds its prefix through `python3` on PATH: with this
    # interpreter's bin first it starts inside this environment, so it imports the videoneva
    # installed here (editable or from a wheel) and this environment's numpy (not a system numpy
    # 2.x that breaks the stub). It does not read PYTHONPATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2))))
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (another process may still take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int, key: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the server binds: a port left in TIME_WAIT by a stopped server is free, a listening one is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ServeError(f"{key}={port}: port {port} on {host} is not available ({exc.strerror}); "
                             f"stop what uses it or pass {key}=<another port>") from None


class TritonServer:
    """One tritonserver process on a model repository; a context manager that always stops it.

    Args:
        model_repository: a rendered repository (see render.py).
        host: address to bind all three endpoints to (127.0.0.1 unless told otherwise).
        grpc_port, http_port, metrics_port: ports; 0 picks a free one.
        log_file: where the server's stdout/stderr go (default: a temp file).
        extra_args: more tritonserver flags (TLS, restricted APIs, …), appended to its command line.
    """

    def __init__(self, model_repository: str | Path, host: str = "127.0.0.1", grpc_port: int = 8001,
                 http_port: int = 8000, metrics_port: int = 8002, log_file: Optional[str | Path] = None,
                 log_verbose: int = 0, binary: Optional[str | Path] = None, model_load_threads: int = 1,
                 stall_timeout: float = 60.0, extra_args: Optional[list[str]] = None):
        self.extra_args = operate.check_extra_args(extra_args or [])
        self.repo = Path(model_repository)
        self.host = host
        self.grpc_port = grpc_port or free_port(host)
        self.http_port = http_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.binary = Path(binary) if binary else find_tritonserver()
        self.log_verbose = log_verbose
        self.model_load_threads = model_load_threads
        self.stall_timeout = stall_timeout
        # The python backend names its shared-memory regions <prefix><uuid> under /dev/shm; our own
        # prefix per start lets stop() remove what a killed server leaves behind.
        self.shm_prefix = f"videoneva_{secrets.token_hex(6)}_"
        self._tmp = tempfile.TemporaryDirectory(prefix="videoneva-triton-")
        self.log_file = Path(log_file) if log_file else Path(self._tmp.name) / "tritonserver.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self, backend_dir: Path) -> list[str]:
        h = self.host
        return [str(self.binary), f"--model-repository={self.repo}", f"--backend-directory={backend_dir}",
                f"--grpc-address={h}", f"--grpc-port={self.grpc_port}",
                f"--http-address={h}", f"--http-port={self.http_port}",
                "--allow-metrics=true", "--allow-gpu-metrics=false", f"--metrics-address={h}",
                f"--metrics-port={self.metrics_port}", f"--log-verbose={self.log_verbose}",
                f"--model-load-thread-count={self.model_load_threads}",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
                "--exit-on-error=true", "--strict-readiness=true", "--exit-timeout-secs=15", *self.extra_args]

    def start(self, timeout: float = 300.0) -> "TritonServer":
        for key, port in (("grpc_port", self.grpc_port), ("http_port", self.http_port),
                          ("metrics_port", self.metrics_port)):
            check_port_free(self.host, port, key)
        backend_dir = assemble_backend_dir(Path(self._tmp.name) / "backends", self.binary)
        cmd = self.command(backend_dir)
        log.info("starting %s", " ".join(cmd))
        self._log_start = self.log_file.stat().st_size if self.log_file.is_file() else 0  # this start's lines only
        self._log_fh = open(self.log_file, "ab")
        # own session: a Ctrl-C in the terminal reaches us, and we stop the server in order
        self.proc = subprocess.Popen(cmd, stdout=self._log_fh, stderr=subprocess.STDOUT,
                                     env=server_env(self.binary), start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        """Wait until ready; ServerNotReady after `timeout` s, or sooner when the start has stalled.

        Stalled: for `stall_timeout` s while not ready, the server and its python stubs together
        used under STALL_CPU_CORES of a core and the log did not grow (a python model's load then
        never finishes; see README). A loading model uses CPU or logs; an idle server uses ~0.004.
        """
        start = time.monotonic()
        deadline = start + timeout
        window: collections.deque = collections.deque()  # (time, cpu seconds, log size) in the last stall_timeout s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                code = self.proc.returncode
                # killed by a signal (a crash, e.g. an uncaught boost::interprocess::lock_exception under
                # load): worth another start; an exit status (a model that fails to load) is not
                raise (ServerNotReady if code < 0 else ServeError)(
                    f"tritonserver {'was killed by signal ' + str(-code) if code < 0 else 'exited with status ' + str(code)}"
                    f" while starting; last lines of {self.log_file}:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.25)
            now, used = time.monotonic(), self.group_cpu_seconds()
            if used is None or not self.stall_timeout:
                continue
            window.append((now, used, self._log_size()))
            while len(window) > 1 and now - window[1][0] >= self.stall_timeout:
                window.popleft()
            t0, cpu0, log0 = window[0]
            if now - t0 >= self.stall_timeout and window[-1][2] == log0 and \
                    (used - cpu0) / (now - t0) < STALL_CPU_CORES:
                raise ServerNotReady(f"tritonserver start stalled: no progress for {now - t0:.0f} s after "
                                     f"{now - start:.0f} s ({(used - cpu0) / (now - t0):.3f} of a core used, log "
                                     f"unchanged; models still loading: {', '.join(self.models_loading()) or 'none named'}); "
                                     f"last lines of {self.log_file}:\n{self.log_tail()}")
        raise ServerNotReady(f"tritonserver not ready after {timeout:.0f} s (models still loading: "
                             f"{', '.join(self.models_loading()) or 'none named'}); last lines of {self.log_file}:\n"
                             f"{self.log_tail()}")

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return -1

    def group_cpu_seconds(self) -> Optional[float]:
        """CPU seconds used so far by the server's process group (its python stubs included); None off Linux."""
        if self.proc is None or not os.path.isdir("/proc"):
            return None
        ticks = sum(int(f[11]) + int(f[12]) for _, f in operate.group_members(self.proc.pid))  # utime + stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def models_loading(self) -> list[str]:
        """Models the log says began loading and has not yet said were loaded (what a stall waits on)."""
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(getattr(self, "_log_start", 0))
                text = fh.read().decode(errors="replace")
        except OSError:
            text = ""
        started = re.findall(r'"loading: ([^:"]+):', text)
        done = set(re.findall(r"successfully loaded '([^']+)'", text))
        return [m for m in dict.fromkeys(started) if m not in done]

    def supervise(self, stop: threading.Event, interval: float = 0.5) -> Optional[str]:
        """operate.supervise on this server: None once `stop` is set, else why it can no longer answer."""
        return operate.supervise(self, stop, interval)

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM, wait, then SIGKILL the process group; returns the exit status."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop in %.0f s; killing it", timeout)
                self._killpg()
                p.wait(10)
        self._killpg()  # python stubs left behind, if any
        self.remove_shm_regions()
        if getattr(self, "_log_fh", None):
            self._log_fh.close()
        return p.returncode

    def remove_shm_regions(self) -> list[str]:
        """Remove the shared-memory regions this server's python backend left (a killed server leaves them)."""
        shm = Path("/dev/shm")
        gone = []
        for f in shm.glob(self.shm_prefix + "*") if shm.is_dir() else []:
            try:
                f.unlink()
                gone.append(f.name)
            except OSError:
                pass
        return gone

    def kill(self) -> None:
        """Kill the server at once (tests: a server that dies mid-run)."""
        if self.proc is not None and self.proc.poll() is None:
            self._killpg()
            self.proc.wait(10)

    def _killpg(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> "TritonServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
        self._tmp.cleanup()
