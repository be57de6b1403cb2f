"""Running tritonserver for operators: extra flags, its processes (from /proc, Linux), stub supervision.

The server runs in its own session, so its process group id is its pid and the python-backend
stubs it forks stay in that group. Each stub's command line is
`triton_python_backend_stub <repo>/<model>/<version>/model.py …` (triton-inference-server/python_backend
r24.10 src/stub_launcher.cc), which names the model it serves.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Iterator, Optional

from videoneva.errors import ConfigError

log = logging.getLogger(__name__)

STUB_NAME = "triton_python_backend_stub"
# flags `TritonServer` sets itself: extra_args may not repeat them (the serve key that sets each)
OWN_FLAGS = {"--model-repository": "model_repository", "--backend-directory": None, "--grpc-address": "host",
             "--grpc-port": "grpc_port", "--http-address": "host", "--http-port": "http_port",
             "--metrics-address": "host", "--metrics-port": "metrics_port", "--log-verbose": "log_verbose",
             "--model-load-thread-count": "model_load_threads", "--strict-readiness": None,
             "--exit-on-error": None, "--model-control-mode": None}


def check_extra_args(extra_args: list[str]) -> list[str]:
    """extra_args (`--flag=value`, `--flag value` or `--flag`) unless one repeats a flag the server is
    started with; ConfigError names the serve key to use instead."""
    takes_value = False
    for a in extra_args:
        if not a.startswith("-"):
            if not takes_value:
                raise ConfigError(f"tritonserver_args: {a!r} is neither a --flag of tritonserver nor its value")
            takes_value = False
            continue
        flag = a.split("=", 1)[0]
        key = OWN_FLAGS.get(flag, "")
        if flag in OWN_FLAGS:
            raise ConfigError(f"tritonserver_args: {flag} is set by videoneva serve itself"
                              + (f"; set {key}= instead" if key else ""))
        takes_value = "=" not in a
    if any("shm-region-prefix-name" in a for a in extra_args):
        raise ConfigError("tritonserver_args: the python backend's shm-region-prefix-name is set by videoneva serve "
                          "itself (it removes the server's shared-memory regions when it stops)")
    return list(extra_args)


def proc_stat(pid: int) -> Optional[list[str]]:
    """Fields of /proc/PID/stat after "pid (comm)": [state, ppid, pgrp, …, starttime at 19, …]; None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def group_members(pgid: int) -> Iterator[tuple[int, list[str]]]:
    """(pid, stat fields) of every live process in process group pgid (none off Linux).

    Zombies are left out: they have exited, and only wait for their parent (init, once the
    server is gone) to collect their status."""
    if not os.path.isdir("/proc"):
        return
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fields = proc_stat(int(pid))
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            yield int(pid), fields


def stub_processes(pgid: int) -> dict[int, tuple[str, str]]:
    """{pid: (model, start time)} of the live python-backend stubs in process group pgid."""
    out = {}
    for pid, fields in group_members(pgid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(argv[0].decode(errors="replace")).name == STUB_NAME and len(argv) > 1:
            model = Path(argv[1].decode(errors="replace")).parent.parent.name
            out[pid] = (model, fields[19])  # the start time tells a reused pid from the stub
    return out


def dead(watched: dict[int, tuple[str, str]]) -> list[str]:
    """Models (sorted, once each) whose watched stub has exited since stub_processes() saw it."""
    gone = set()
    for pid, (model, start) in watched.items():
        fields = proc_stat(pid)
        if fields is None or fields[0] == "Z" or fields[19] != start:
            gone.add(model)
    return sorted(gone)


def supervise(server, stop: threading.Event, interval: float = 0.5) -> Optional[str]:
    """Watch a started TritonServer until `stop` is set (returns None) or it can no longer answer (returns why).

    The stubs alive now are watched; when one dies the server is told to shut down (SIGTERM:
    readiness turns false at once, requests in flight get --exit-timeout-secs) and the reason
    names the model whose stub died. A server that exits on its own is reported too.
    """
    proc = server.proc
    watched = stub_processes(proc.pid)
    log.info("supervising tritonserver pid %s and %d python-backend stubs", proc.pid, len(watched))
    while not stop.wait(interval):
        if proc.poll() is not None:
            return f"tritonserver exited with status {proc.returncode}"
        gone = dead(watched)
        if gone:
            why = (f"the python-backend stub of model(s) {', '.join(gone)} died; Triton does not restart stubs, "
                   "so the server is shutting down (readiness is false) to be restarted")
            log.error(why)
            proc.send_signal(signal.SIGTERM)
            return why
    return None
