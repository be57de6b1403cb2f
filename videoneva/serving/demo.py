"""`make demo`: the embedded demo model served by Triton and asked over gRPC, end to end.

  1. fresh synthetic held-out videos (a seed never used in training), seed-format prompt file;
  2. `videoneva build` of the embedded demo checkpoint into an engine directory, the LLM exported
     to ONNX with its KV cache too (llm.backend=onnx: ONNX Runtime runs it on this CPU);
  3. `videoneva serve` on free loopback ports (tritonserver from the nvidia-pytriton wheel);
  4. `videoneva infer server_url=…` over gRPC, media sent as bytes; each answer beside its
     reference, then the accuracy per question type;
  5. a short benchmark on the live server: a video's first question (decode + encode: a cache
     miss) vs a further question about it (a feature-cache hit), and requests/s at concurrency 1 vs 4;
  6. the server stopped.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from videoneva.cli import main as cli
from videoneva.config import load_config
from videoneva.demo.run import DEMO_INSERT, DEMO_MODEL, DEMO_SEED, print_side_by_side
from videoneva.stats import Stats


def _step(text: str) -> None:
    print(f"\n== {text}", file=sys.stderr, flush=True)


def bench_clips(folder: Path, n: int = 4) -> list[bytes]:
    """n new 640x360 H.264 clips (5 s at 24 fps) that the demo's prompt file never sent."""
    from videoneva.media.encode import encode_video, gradient_frames

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"bench_{i}.mp4"
        if not p.is_file():
            encode_video(gradient_frames(120, 360, 640, seed=1000 + i), p, "h264", fps=24)
        out.append(p.read_bytes())
    return out


def short_benchmark(url: str, clips: list[bytes], tokens: int = 8) -> dict:
    """Cache miss vs hit latency and requests/s at concurrency 1 and 4, on the running server."""
    from videoneva.serving import Client

    def ask(c, clip, q):
        t0 = time.perf_counter()
        r = c.answer(q, media_type="video", media_bytes=clip, max_tokens=tokens, greedy=True,
                     insert_media_token=DEMO_INSERT)
        return time.perf_counter() - t0, r.media.get("cache")

    with Client(url) as c:
        miss, hit = [], []
        for clip in clips:  # videos the server has not seen: a miss, then a hit
            for q in ("What color is the shape?", "What is the shape doing?"):
                t, kind = ask(c, clip, q)
                (hit if kind == "hit" else miss).append(t)
        rates = {}
        for conc in (1, 4):
            jobs = [(clips[i % len(clips)], f"Question {i}?") for i in range(8 * conc)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(conc) as pool:
                list(pool.map(lambda j: ask(c, *j), jobs))
            rates[conc] = len(jobs) / (time.perf_counter() - t0)
    m, h = Stats.of(miss), Stats.of(hit)
    print(f"\nfeature cache: first question about a video p50 {m.p50 * 1000:.1f} ms, a further question "
          f"p50 {h.p50 * 1000:.1f} ms ({m.p50 / h.p50:.1f}x faster, {h.n} hits)")
    print(f"throughput: {rates[1]:.1f} requests/s at concurrency 1, {rates[4]:.1f} at concurrency 4 "
          f"({rates[4] / rates[1]:.2f}x)")
    print("(fuller runs: python benchmarks/bench_cache.py; see benchmarks/README.md)")
    return {"miss": m, "hit": h, "rates": rates}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/demo", help="working folder (data, engine, answers, report)")
    ap.add_argument("--n", type=int, default=12, help="number of synthetic scenes to generate")
    ap.add_argument("--seed", type=int, default=DEMO_SEED, help="data seed (must differ from training's)")
    ap.add_argument("--model", default=str(DEMO_MODEL), help="checkpoint to build and serve")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight during the prompt file")
    args = ap.parse_args(argv)
    out = Path(args.out)
    data, engine, answers = out / "data", out / "engine", out / "answers.jsonl"
    if not Path(args.model).is_dir():
        print(f"demo: model not found at {args.model}", file=sys.stderr)
        return 2
    _step(f"1/6 synthetic held-out videos (seed {args.seed}) -> {data}")
    rc = cli(["demo-data", f"out={data}", f"n={args.n}", f"seed={args.seed}", "heldout_fraction=1.0"])
    if rc:
        return rc
    _step(f"2/6 videoneva build {args.model} -> {engine} (llm.backend=onnx)")
    rc = cli(["build", f"checkpoint={args.model}", f"output={engine}", "max_input_len=768", "max_output_len=256",
              "llm.backend=onnx", "overwrite=true"])
    if rc:
        return rc
    from videoneva.serving.serve import ServeConfig, start_server

    _step("3/6 videoneva serve (Triton Inference Server, gRPC on 127.0.0.1)")
    cfg = load_config(ServeConfig, [f"engine_dir={engine}", "grpc_port=0", "http_port=0", "metrics_port=0",
                                    "threads=1"])
    work = out / "server"  # the rendered model repository and tritonserver.log stay for a look afterwards
    if work.exists():
        shutil.rmtree(work)
    server = start_server(cfg, work)
    try:
        print(f"serving at grpc={server.grpc_url} (metrics {server.metrics_url}; log {server.log_file})", file=sys.stderr)
        _step(f"4/6 videoneva infer server_url={server.grpc_url} concurrency={args.concurrency}")
        rc = cli(["infer", f"server_url={server.grpc_url}", f"prompt_file={data / 'heldout_prompts.jsonl'}",
                  f"output_file={answers}", f"inference.media_base_path={data}", "inference.media_type=video",
                  "inference.greedy=true", "inference.tokens_to_generate=24",
                  f"inference.insert_media_token={DEMO_INSERT}", f"concurrency={args.concurrency}",
                  "overwrite=true", "print_answers=false"])
        if rc not in (0, 1):
            return rc
        print_side_by_side(answers, data / "heldout_refs.jsonl")
        rc = cli(["eval-demo", f"output_file={answers}", f"refs={data / 'heldout_refs.jsonl'}",
                  f"report={out / 'accuracy.json'}"])
        _step("5/6 short benchmark on the live server")
        short_benchmark(server.grpc_url, bench_clips(out / "bench"))
    finally:
        _step("6/6 stopping the server")
        server.stop()
    return rc


if __name__ == "__main__":
    sys.exit(main())
