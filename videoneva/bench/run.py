"""`videoneva bench server_url=… prompt_file=…`: latency and throughput of a live server at several concurrencies."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from videoneva.bench.loadgen import GenSettings, ServerTarget, load_jobs, run_level
from videoneva.bench.metrics import LevelSummary
from videoneva.bench.report import CpuMeter, command_line, level_table, machine_info, now_iso, plot_levels, write_json
from videoneva.config import _help, _positive, config_help, load_config
from videoneva.errors import ConfigError

log = logging.getLogger(__name__)

HELP = """videoneva bench: load-test a `videoneva serve` server over gRPC.

  videoneva bench server_url=HOST:PORT prompt_file=Q.jsonl [media_base_path=DIR] concurrency=1,2,4,8,16 \\
      num_requests=N [request_rate=R] [tokens_to_generate=K ignore_eos=true] [warmup=W]

For each concurrency level: W warm-up requests (not timed), then N timed requests cycling through
the prompt file, at most `concurrency` in flight (and Poisson arrivals at request_rate when given).
Reports time to first token, inter-token latency and end-to-end latency (p50/p90/p99), output
tokens/s, requests/s and errors; writes OUTPUT_DIR/NAME.json, NAME.md and two PNG plots."""


@dataclass
class BenchConfig:
    server_url: Optional[str] = _help("gRPC endpoint HOST:PORT of `videoneva serve`", default=None)
    prompt_file: Optional[str] = _help("prompt jsonl (the seed's format: video/image, text, question_id)", default=None)
    media_base_path: Optional[str] = _help("folder of the prompt file's media (default: the prompt file's folder)",
                                           default=None)
    media_type: str = _help("media type of lines without a video/image key: video | image", default="video")
    concurrency: str = _help("comma-separated concurrency levels", default="1,2,4,8,16")
    num_requests: int = _help("timed requests per level (at least the level's concurrency are sent)", default=32)
    request_rate: Optional[float] = _help("Poisson arrivals per second (null: closed loop)", default=None)
    tokens_to_generate: int = _help("max tokens per answer", default=32)
    ignore_eos: bool = _help("generate exactly tokens_to_generate tokens (min_tokens = max_tokens)", default=False)
    warmup: int = _help("untimed requests before each level", default=2)
    insert_media_token: Optional[str] = _help("left | right | null (the server's setting)", default=None)
    send_media: str = _help("bytes (read here and sent, as a remote client) | path (server-side media_root)",
                            default="bytes")
    output_dir: str = _help("where the report goes", default="benchmarks/results")
    name: str = _help("report file stem", default="serving")
    timeout: float = _help("seconds one request may take", default=600.0)
    seed: int = _help("seed of the arrival times", default=0)
    progress: bool = _help("show a progress bar", default=True)
    plots: bool = _help("write the PNG plots", default=True)

    def __post_init__(self) -> None:
        if not self.server_url:
            raise ConfigError("server_url=HOST:PORT is required (start one with `videoneva serve engine_dir=…`)")
        if not self.prompt_file:
            raise ConfigError("prompt_file=PATH is required (make one with `videoneva demo-data out=DIR`)")
        self.levels()  # validates
        _positive("num_requests", self.num_requests)
        _positive("tokens_to_generate", self.tokens_to_generate)
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {self.warmup}")
        if self.insert_media_token not in (None, "left", "right", "none"):
            raise ConfigError(f"insert_media_token={self.insert_media_token!r}: choose left, right, none or null")

    def levels(self) -> list[int]:
        try:
            levels = [int(x) for x in str(self.concurrency).split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"concurrency={self.concurrency!r}: give comma-separated integers, e.g. 1,2,4,8") from None
        if not levels or min(levels) < 1:
            raise ConfigError(f"concurrency={self.concurrency!r}: levels must be integers >= 1")
        return levels

    def gen(self) -> GenSettings:
        return GenSettings(self.tokens_to_generate, self.ignore_eos)


def bench_target(target, jobs, cfg: BenchConfig) -> tuple[list[LevelSummary], list[dict]]:
    """Every level of cfg against one target; returns the summaries and each level's CPU use."""
    summaries, cpu = [], []
    for c in cfg.levels():
        meter = CpuMeter()
        _, s = run_level(target, jobs, c, max(cfg.num_requests, c), cfg.request_rate, cfg.warmup, cfg.seed,
                         cfg.progress)
        summaries.append(s)
        cpu.append({"concurrency": c, **meter.read()})
        rps = "—" if s.requests_per_s is None else f"{s.requests_per_s:.3f}"
        ttft = "—" if s.ttft is None else f"{s.ttft.p50 * 1000:.1f} ms"
        print(f"{target.name} concurrency={c}: {rps} requests/s, TTFT p50 {ttft}, {s.errors} errors"
              + (f" (first: {s.error_samples[0]})" if s.errors else ""), flush=True)
    return summaries, cpu


def run(cfg: BenchConfig, argv: Optional[list[str]] = None) -> dict:
    """Benchmark the server in cfg; writes the report files and returns the report."""
    from videoneva.serving import Client

    jobs = load_jobs(cfg.prompt_file, cfg.media_type)
    root = cfg.media_base_path or str(Path(cfg.prompt_file).resolve().parent)
    machine_start = machine_info()
    with Client(cfg.server_url, timeout=cfg.timeout, retries=1) as client:
        client.wait_ready(60)
        target = ServerTarget(client, cfg.gen(), root, cfg.send_media, cfg.insert_media_token)
        levels, cpu = bench_target(target, jobs, cfg)
    report = {"benchmark": "serving latency and throughput (videoneva bench)",
              "command": command_line(["videoneva", "bench", *(argv or [])]) if argv is not None else command_line(),
              "created": now_iso(), "config": asdict(cfg), "prompts": len(jobs),
              "machine": {**machine_start, "load_average_end": machine_info()["load_average"]},
              "targets": {target.name: {"levels": levels, "cpu": cpu}}}
    write_report(report, Path(cfg.output_dir) / cfg.name, cfg.plots)
    return report


def write_report(report: dict, prefix: Path, plots: bool = True) -> None:
    """prefix.json, prefix.md and (plots) prefix_*.png for a report with "targets"."""
    levels = {name: t["levels"] for name, t in report["targets"].items()}
    prefix.parent.mkdir(parents=True, exist_ok=True)
    report["plots"] = plot_levels(levels, prefix, report.get("title", prefix.name)) if plots else []
    write_json(report, prefix.with_suffix(".json"))
    m = report["machine"]
    md = [f"# {report['benchmark']}", "", "Reproduce:", "", "```", report["command"], "```", "",
          f"Created {report['created']} on {m['cpu']} ({m['usable_cpus']} usable CPUs, GPU: {m['gpu'] or 'none'}; "
          f"load average {m['load_average']} at the start, {m.get('load_average_end')} at the end).", "",
          level_table(levels), ""]
    md += report.get("notes_md", [])
    md += [f"![{Path(p).name}]({Path(p).name})" for p in report["plots"]]
    prefix.with_suffix(".md").write_text("\n".join(md) + "\n")


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(HELP + "\n\n" + config_help(BenchConfig, "Configuration"))
        return 0
    cfg: BenchConfig = load_config(BenchConfig, argv)
    report = run(cfg, argv)
    prefix = Path(cfg.output_dir) / cfg.name
    print(level_table({name: t["levels"] for name, t in report["targets"].items()}))
    print(f"wrote {prefix}.json, {prefix}.md" + (f" and {len(report['plots'])} plots" if report["plots"] else ""))
    return 0
