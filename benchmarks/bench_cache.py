"""Feature-cache benchmark: repeated-video latency on a live Triton server, with the cache vs without.

Two servers run side by side on the same engine directory, one with the visual feature cache
(cache_bytes=256 MiB) and one without (cache_bytes=0). Each round sends every video once to both
(warm-up; a miss on the cached server), then asks `--repeats` further questions about the same
videos, alternating which server goes first. Reported: end-to-end latency of the repeated
questions (p50/p90) on each server, and the ratio without/with. Media travel as bytes over gRPC,
as from a remote client. The cache saves the decode and the vision encoder, not the generation:
targets >= 5x with 8-token answers, >= 2x with 64-token answers (--target). Writes
results/<name>.json and .md.

    python benchmarks/bench_cache.py [--engine-dir DIR | --llm-backend onnx|torch] [--seconds 10] [--tokens 8]
    python benchmarks/bench_cache.py --tokens 64 --target 2 --name cache_64tokens

Without --engine-dir the embedded demo model is built into benchmarks/results/tmp/engine_<backend>
first, with the ONNX Runtime LLM unless --llm-backend torch.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import videoneva.media  # noqa: F401  (PyAV before decord)
from videoneva.cli import main as cli
from videoneva.config import load_config
from videoneva.demo.run import DEMO_INSERT, DEMO_MODEL
from videoneva.media.encode import encode_video
from videoneva.serving import Client
from videoneva.serving.serve import ServeConfig, start_server
from videoneva.stats import Stats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_decode import synthetic_frames  # noqa: E402


def demo_engine(tmp: Path, llm_backend: str) -> Path:
    out = tmp / f"engine_{llm_backend}"
    if not (out / "manifest.json").is_file():
        assert cli(["build", f"checkpoint={DEMO_MODEL}", f"output={out}", "max_input_len=768", "max_output_len=256",
                    f"llm.backend={llm_backend}", "overwrite=true"]) == 0
    return out


def videos(tmp: Path, n: int, seconds: int) -> list[bytes]:
    """n distinct 1280x720 30 fps H.264 clips, a typical user video (cached on disk)."""
    out = []
    for i in range(n):
        p = tmp / f"cache_clip_{i}_{seconds}s_720p.mp4"
        if not p.is_file():
            encode_video(list(synthetic_frames(30 * seconds, 720, 1280, seed=100 + i)), p, "h264", fps=30)
        out.append(p.read_bytes())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine-dir", help="engine directory (default: the demo model, built first)")
    ap.add_argument("--llm-backend", default="onnx", choices=["onnx", "torch"],
                    help="LLM of the demo engine built without --engine-dir (onnx: what `make demo` serves)")
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=10, help="length of each clip")
    ap.add_argument("--repeats", type=int, default=4, help="further questions per video and server")
    ap.add_argument("--tokens", type=int, default=8, help="tokens generated per answer (greedy, exactly this many)")
    ap.add_argument("--target", type=float, default=5.0, help="the no-cache / cache p50 ratio aimed at")
    ap.add_argument("--name", default="cache", help="results file stem")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    tmp = HERE / "results" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    engine = Path(args.engine_dir) if args.engine_dir else demo_engine(tmp, args.llm_backend)
    llm_backend = json.loads((engine / "manifest.json").read_text())["settings"]["llm"]["backend"]
    clips = videos(tmp, args.videos, args.seconds)
    common = [f"engine_dir={engine}", "grpc_port=0", "http_port=0", "metrics_port=0", "threads=1"]
    lat: dict[str, list[float]] = {"cache": [], "no_cache": []}
    hits = {"cache": 0, "no_cache": 0}
    with tempfile.TemporaryDirectory() as work:
        servers = {"cache": start_server(load_config(ServeConfig, common + ["cache_bytes=268435456"]), Path(work) / "a"),
                   "no_cache": start_server(load_config(ServeConfig, common + ["cache_bytes=0"]), Path(work) / "b")}
        try:
            clients = {k: Client(s.grpc_url) for k, s in servers.items()}

            def ask(which: str, clip: bytes, q: str) -> dict:
                return clients[which].answer(q, media_type="video", media_bytes=clip, max_tokens=args.tokens,
                                             min_tokens=args.tokens, greedy=True, insert_media_token=DEMO_INSERT)

            for i, clip in enumerate(clips):
                for which in lat:
                    ask(which, clip, "What color is the shape?")  # warm-up: the cached server's miss
                for r in range(args.repeats):
                    order = list(lat) if (i + r) % 2 == 0 else list(lat)[::-1]
                    for which in order:
                        t0 = time.perf_counter()
                        res = ask(which, clip, f"Question {r}: what is the shape doing?")
                        lat[which].append(time.perf_counter() - t0)
                        hits[which] += res.media.get("cache") == "hit"
        finally:
            for s in servers.values():
                s.stop()
    stats = {k: Stats.of(v) for k, v in lat.items()}
    ratio = stats["no_cache"].p50 / stats["cache"].p50
    report = {
        "benchmark": "feature cache: repeated-video latency, cache vs no cache (two live servers, gRPC)",
        "command": "python benchmarks/bench_cache.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "engine_dir": str(engine), "llm_backend": llm_backend, "videos": args.videos, "seconds": args.seconds, "resolution": "1280x720 H.264 30 fps",
        "repeats": args.repeats, "tokens": args.tokens,
        "latency": {k: asdict(v) for k, v in stats.items()}, "cache_hits": hits,
        "speedup_p50": ratio, "target": args.target, "meets_target": ratio >= args.target,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [f"# Feature cache: repeated-video latency ({report['date']})", "",
          f"`{report['command']}` on {report['machine']['platform']}, {report['machine']['cpus']} CPUs.",
          f"{args.videos} clips of {args.seconds} s ({report['resolution']}), {args.repeats} repeated questions each, "
          f"{args.tokens} tokens greedy (min_tokens = max_tokens), media sent as bytes over gRPC; LLM backend {llm_backend}.", "",
          "| server | p50 (s) | p90 (s) | mean (s) | cache hits |", "|---|---|---|---|---|"]
    for k, s in stats.items():
        md.append(f"| {k} | {s.p50:.4f} | {s.p90:.4f} | {s.mean:.4f} | {hits[k]}/{s.n} |")
    md += ["", f"**Speed-up of a repeated video (p50, no cache / cache): {ratio:.1f}x** (target >= {args.target:g}x)."]
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
