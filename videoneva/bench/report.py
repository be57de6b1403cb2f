"""Benchmark reports: the machine they ran on, JSON, a Markdown table and PNG plots (matplotlib)."""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Optional

from videoneva.bench.metrics import LevelSummary


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions(names: tuple[str, ...]) -> dict:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def machine_info() -> dict:
    """CPU, usable cores, GPU (None on CPU), load average now, library versions."""
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001  a broken CUDA install = no GPU for this report
        gpu = None
    return {"cpu": cpu_model(), "usable_cpus": len(os.sched_getaffinity(0)), "gpu": gpu,
            "load_average": [round(x, 2) for x in os.getloadavg()], "platform": platform.platform(),
            "python": platform.python_version(),
            **_versions(("torch", "transformers", "onnxruntime", "decord", "tritonclient", "nvidia-pytriton"))}


class CpuMeter:
    """Cores busy during a span: this process (CPU s / wall s) and the whole machine (from /proc/stat).

    A whole-machine figure near the usable core count while this process is idle means another job
    was running: then absolute times are slower than on a quiet machine, ratios less so.
    """

    def __init__(self):
        self.t, self.proc, self.sys = time.perf_counter(), time.process_time(), self._busy_jiffies()

    @staticmethod
    def _busy_jiffies() -> Optional[float]:
        try:
            f = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        return sum(f) - f[3] - (f[4] if len(f) > 4 else 0.0)  # all minus idle and iowait

    def read(self) -> dict:
        wall = time.perf_counter() - self.t
        hz = os.sysconf("SC_CLK_TCK")
        now = self._busy_jiffies()
        system = None if now is None or self.sys is None or wall <= 0 else (now - self.sys) / hz / wall
        return {"process_cores_busy": round((time.process_time() - self.proc) / wall, 3) if wall > 0 else None,
                "machine_cores_busy": None if system is None else round(system, 3), "wall_s": round(wall, 3)}


def command_line(argv: Optional[list[str]] = None) -> str:
    """The command that reproduces this run, as typed."""
    argv = sys.argv if argv is None else argv
    prog = Path(argv[0]).name
    head = "videoneva" if prog in ("videoneva", "cli.py") else f"python {argv[0]}"
    return " ".join([head, *map(shlex.quote, argv[1:])])


def to_jsonable(x):
    if is_dataclass(x):
        return asdict(x)
    raise TypeError(f"cannot serialize {type(x).__name__}")


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=to_jsonable) + "\n")


def _ms(s, key: str) -> str:
    v = None if s is None else (s[key] if isinstance(s, dict) else getattr(s, key))
    return "—" if v is None else f"{v * 1000:.1f}"


def _num(v, fmt: str = ".2f") -> str:
    return "—" if v is None else format(v, fmt)


def _get(level, key):
    return level[key] if isinstance(level, dict) else getattr(level, key)


def level_table(targets: dict[str, list]) -> str:
    """Markdown table: one row per (target, level); latencies in ms, p50 / p90 / p99."""
    head = ("| target | concurrency | rate (req/s) | requests | errors | requests/s | output tokens/s | "
            "TTFT p50 / p90 / p99 (ms) | ITL p50 / p90 / p99 (ms) | e2e p50 / p90 / p99 (ms) |")
    rows = [head, "|" + "---|" * 10]
    for name, levels in targets.items():
        for lv in levels:
            cols = [name, str(_get(lv, "concurrency")), _num(_get(lv, "request_rate"), "g"), str(_get(lv, "requests")),
                    str(_get(lv, "errors")), _num(_get(lv, "requests_per_s"), ".3f"),
                    _num(_get(lv, "output_tokens_per_s"), ".2f")]
            for m in ("ttft", "itl", "e2e"):
                s = _get(lv, m)
                cols.append(" / ".join(_ms(s, k) for k in ("p50", "p90", "p99")))
            rows.append("| " + " | ".join(cols) + " |")
    return "\n".join(rows)


def plot_levels(targets: dict[str, list[LevelSummary]], out_prefix: Path, title: str) -> list[str]:
    """Two PNGs: e2e latency p50 vs output tokens/s, and TTFT p50 (p90 bar) vs concurrency; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, levels in targets.items():
        pts = [(_get(lv, "output_tokens_per_s"), _get(lv, "e2e"), _get(lv, "concurrency")) for lv in levels
               if _get(lv, "output_tokens_per_s") is not None and _get(lv, "e2e") is not None]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ys = [(p[1]["p50"] if isinstance(p[1], dict) else p[1].p50) for p in pts]
        ax.plot(xs, ys, marker="o", label=name)
        for x, y, (_, _, c) in zip(xs, ys, pts):
            ax.annotate(f"c={c}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    paths.append(_save(plt, fig, ax, "output tokens/s", "end-to-end latency p50 (s)",
                       f"{title}: latency vs throughput", out_prefix, "_latency_throughput.png"))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, levels in targets.items():
        pts = [(_get(lv, "concurrency"), _get(lv, "ttft")) for lv in levels if _get(lv, "ttft") is not None]
        if not pts:
            continue
        cs = [c for c, _ in pts]
        p50 = [(t["p50"] if isinstance(t, dict) else t.p50) for _, t in pts]
        p90 = [(t["p90"] if isinstance(t, dict) else t.p90) for _, t in pts]
        ax.errorbar(cs, p50, yerr=[[0] * len(cs), [b - a for a, b in zip(p50, p90)]], marker="o", capsize=3,
                    label=f"{name} (bar: p90)")
    ax.set_xscale("log", base=2)
    paths.append(_save(plt, fig, ax, "concurrency", "time to first token p50 (s)",
                       f"{title}: TTFT vs concurrency", out_prefix, "_ttft_concurrency.png"))
    return paths


def _save(plt, fig, ax, xlabel: str, ylabel: str, title: str, out_prefix: Path, suffix: str) -> str:
    """Label, grid and legend one plot, write it as out_prefix + suffix, close it; returns the path."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    p = out_prefix.with_name(out_prefix.name + suffix)
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return str(p)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
