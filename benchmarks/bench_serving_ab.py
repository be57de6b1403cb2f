"""Serving A/B, side by side in one run: this checkout's Triton models vs those of an earlier commit.

Two `videoneva serve` servers on the same engine directory run at once (an idle one uses ~0.4% of
a core); each concurrency level is measured on both, alternating which goes first, so machine
noise falls on both alike. Server A is `git archive BASE` (its `videoneva` package and its
triton_repo/ templates, started with that package first on the import path), server B this
checkout, or `git archive HEAD_REV` with --head. Same prompts, greedy, a fixed output length (ignore_eos), the feature cache off.
Answers are streamed (as `videoneva bench` does) unless --unstreamed; a request without an
answer in 60 s counts as an error.

  python benchmarks/bench_serving_ab.py --base 7070604               # streamed
  python benchmarks/bench_serving_ab.py --base 7070604 --unstreamed  # one response per answer

Writes results/serving_ab_streamed.{json,md} or results/serving_ab_unstreamed.{json,md} (or --name).
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import videoneva.media  # noqa: F401  (PyAV before decord)
from videoneva.bench.loadgen import GenSettings, ServerTarget, load_jobs, run_level
from videoneva.bench.metrics import same_outputs
from videoneva.bench.report import CpuMeter, command_line, machine_info, now_iso, write_json
from videoneva.demo.run import DEMO_INSERT

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def code_at(rev: str, out: Path) -> str:
    """The `videoneva` package and triton_repo/ of commit rev, unpacked under out; returns its commit id."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    out.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", sha, "videoneva", "triton_repo"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return sha


def code_env(root: Path | None) -> dict:
    """The environment that runs the code under root (None: this checkout) first on the import path."""
    env = dict(os.environ)
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    return env


def build_with(root: Path | None, ckpt: Path, out: Path) -> Path:
    """The demo engine directory, built by the code under root (each side reads its own format)."""
    subprocess.run([sys.executable, "-m", "videoneva.cli", "build", f"checkpoint={ckpt}", f"output={out}",
                    "max_input_len=768", "max_output_len=64", "llm.backend=onnx", "overwrite=true"],
                   env=code_env(root), check=True, capture_output=True)
    return out


class Served:
    """`python -m videoneva.cli serve` of the code under root (None: this checkout), until stop()."""

    def __init__(self, engine: Path, root: Path | None, instances: int, threads: int):
        env = code_env(root)
        cli = [sys.executable, "-m", "videoneva.cli", "serve"]
        keys = subprocess.run(cli + ["--help"], env=env, check=True, capture_output=True, text=True).stdout
        thread_key = "threads" if re.search(r"^  threads \[", keys, re.M) else "torch_threads"
        self.proc = subprocess.Popen(cli + [f"engine_dir={engine}", "grpc_port=0", "http_port=0", "metrics_port=0",
                                            "cache_bytes=0", f"{thread_key}={threads}", f"videoneva_instances={instances}",
                                            "startup_timeout=600"],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            if "videoneva serve: ready" in line:
                self.grpc_url = re.search(r"grpc=(\S+)", line).group(1)
                threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
                return
        raise RuntimeError("server did not start:\n" + "".join(lines[-30:]))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


class UnstreamedTarget(ServerTarget):
    """ServerTarget with one response per answer (no text deltas, so no time to first token)."""

    def send(self, job, on_token):
        g = self.gen
        result = self.client.answer(job.text, request_id=str(job.question_id), max_tokens=g.tokens_to_generate,
                                    min_tokens=g.min_tokens, greedy=g.greedy, repetition_penalty=g.repetition_penalty,
                                    insert_media_token=self.insert, **self.media(job))
        return list(result.token_ids)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="HEAD", help="commit whose Triton models are server A")
    ap.add_argument("--head", default=None, help="commit whose Triton models are server B (default: this checkout)")
    ap.add_argument("--concurrency", default="1,4,8", help="levels")
    ap.add_argument("--num-requests", type=int, default=24, help="timed requests per level and server")
    ap.add_argument("--rounds", type=int, default=2, help="times every level is measured on each server")
    ap.add_argument("--tokens", type=int, default=8, help="output tokens per answer (fixed: ignore_eos)")
    ap.add_argument("--server-threads", type=int, default=1, help="torch threads per model instance")
    ap.add_argument("--unstreamed", action="store_true", help="one response per answer instead of streamed text")
    ap.add_argument("--name", default=None, help="results file stem (default: serving_ab_streamed / _unstreamed)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from bench_serving import TMP, model_checkpoint, prompt_file

    levels = [int(x) for x in args.concurrency.split(",")]
    gen = GenSettings(args.tokens, ignore_eos=True)
    machine = machine_info()
    ckpt = model_checkpoint("demo", 2)
    prompts = prompt_file(TMP / "serve_media", 4, 10, 640, 360)
    jobs = load_jobs(prompts)
    from videoneva.serving import Client

    with tempfile.TemporaryDirectory(prefix="bench_ab_") as work:
        sha = code_at(args.base, Path(work) / "base")
        head_sha = code_at(args.head, Path(work) / "head") if args.head else None
        roots = {"A": Path(work) / "base", "B": Path(work) / "head" if args.head else None}
        engines = {k: build_with(r, ckpt, Path(work) / f"engine_{k}") for k, r in roots.items()}
        servers = {"A": Served(engines["A"], roots["A"], max(levels), args.server_threads)}
        try:
            servers["B"] = Served(engines["B"], roots["B"], max(levels), args.server_threads)
            clients = {k: Client(s.grpc_url, timeout=60, retries=0) for k, s in servers.items()}
            kind = UnstreamedTarget if args.unstreamed else ServerTarget
            targets = {k: kind(c, gen, prompts.parent, "bytes", DEMO_INSERT) for k, c in clients.items()}
            for t in targets.values():  # every instance's first call
                run_level(t, jobs, max(levels), max(levels), progress=False)
            rows, records = [], {"A": [], "B": []}
            for rnd in range(args.rounds):
                for i, c in enumerate(levels):
                    order = ("A", "B") if (rnd + i) % 2 == 0 else ("B", "A")
                    for k in order:
                        meter = CpuMeter()
                        recs, s = run_level(targets[k], jobs, c, max(args.num_requests, c), None, 1, progress=False)
                        records[k].extend(recs)
                        rows.append({"round": rnd, "server": k, "concurrency": c, "requests_per_s": s.requests_per_s,
                                     "e2e_p50_s": s.e2e.p50 if s.e2e else None, "errors": s.errors,
                                     "error_samples": s.error_samples[:2], **meter.read()})
                        print(f"round {rnd} {k} c={c}: {s.requests_per_s:.2f} req/s, e2e p50 "
                              f"{(s.e2e.p50 if s.e2e else float('nan')) * 1000:.0f} ms, {s.errors} errors", flush=True)
            for c in clients.values():
                c.close()
        finally:
            for s in servers.values():
                s.stop()

    summary = []
    for c in levels:
        a = [r for r in rows if r["server"] == "A" and r["concurrency"] == c]
        b = [r for r in rows if r["server"] == "B" and r["concurrency"] == c]
        ra, rb = (sum(r["requests_per_s"] or 0 for r in x) / len(x) for x in (a, b))
        la, lb = (sorted(r["e2e_p50_s"] for r in x if r["e2e_p50_s"] is not None) for x in (a, b))
        summary.append({"concurrency": c, "A_requests_per_s": ra, "B_requests_per_s": rb,
                        "B_over_A_throughput": rb / ra if ra else None,
                        "A_e2e_p50_s": la[len(la) // 2] if la else None, "B_e2e_p50_s": lb[len(lb) // 2] if lb else None,
                        "errors": {"A": sum(r["errors"] for r in a), "B": sum(r["errors"] for r in b)}})
    report = {"benchmark": "serving A/B: an earlier commit's Triton models (A) vs this checkout's (B), demo model",
              "command": command_line(), "created": now_iso(), "base_commit": sha, "head_commit": head_sha,
              "settings": {**{k: str(v) for k, v in vars(args).items()}, "ignore_eos": True, "greedy": True,
                           "cache_bytes": 0, "llm_backend": "onnx", "media": "4 H.264 clips, 10 s 640x360 30 fps, as bytes"},
              "machine": {**machine, "load_average_end": machine_info()["load_average"]},
              "same_outputs_B_vs_A": same_outputs(records["B"], records["A"]), "summary": summary, "runs": rows}
    name = args.name or ("serving_ab_unstreamed" if args.unstreamed else "serving_ab_streamed")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(report, args.out / f"{name}.json")
    md = [f"# Serving A/B: {sha[:7]} (A) vs {head_sha[:7] if head_sha else 'this checkout'} (B), demo model, "
          f"{'unstreamed' if args.unstreamed else 'streamed'} answers", "", f"`{report['command']}`", "",
          f"{report['created']}; load average {machine['load_average']} at the start; "
          f"same token ids B vs A: {report['same_outputs_B_vs_A']:.0%}" if report["same_outputs_B_vs_A"] is not None
          else "same token ids: —", "",
          "| concurrency | A req/s | B req/s | B / A | A e2e p50 (ms) | B e2e p50 (ms) | errors A / B |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        md.append(f"| {s['concurrency']} | {s['A_requests_per_s']:.2f} | {s['B_requests_per_s']:.2f} | "
                  f"{s['B_over_A_throughput']:.2f}× | {s['A_e2e_p50_s'] * 1000:.0f} | {s['B_e2e_p50_s'] * 1000:.0f} | "
                  f"{s['errors']['A']} / {s['errors']['B']} |")
    (args.out / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
