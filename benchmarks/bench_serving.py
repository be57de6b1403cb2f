"""Serving benchmark, side by side in one run: plain-transformers baseline vs the in-process pipeline vs Triton.

Same model, same prompts, greedy decoding, a fixed output length (ignore_eos) for all three:
  baseline   videoneva.bench.baseline: decord decodes the whole video, LlavaProcessor,
             LlavaForConditionalGeneration.generate, one request at a time
  pipeline   videoneva's in-process Pipeline on the engine directory (sampled-frame decode,
             ONNX Runtime vision, torch LLM), one request at a time
  triton     `videoneva serve` on the same engine directory, over gRPC with media sent as bytes,
             at each concurrency level
The feature cache is off everywhere (cache_bytes=0): every request decodes and encodes its video,
as the baseline does (the cache has its own benchmark). The baseline and the pipeline serve one
request at a time by construction, so they run at concurrency 1; the server runs every level.

  python benchmarks/bench_serving.py --model demo      # the embedded demo model (copied first)
  python benchmarks/bench_serving.py --model realistic # CLIP ViT-L/14 224 + a ~1B Llama, random weights

Writes results/serving_<model>.json, .md and two PNG plots.
"""
from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

import videoneva.media  # noqa: F401  (PyAV before decord)
from videoneva.bench.loadgen import GenSettings, PipelineTarget, ServerTarget, load_jobs, run_level
from videoneva.bench.metrics import same_outputs
from videoneva.bench.report import CpuMeter, command_line, machine_info, now_iso
from videoneva.bench.run import write_report
from videoneva.cli import main as cli
from videoneva.demo.run import DEMO_INSERT

HERE = Path(__file__).resolve().parent
TMP = HERE / "results" / "tmp"
QUESTIONS = ("What color is the shape?", "What is the shape doing?", "How many shapes are there?",
             "Describe the video.")


def realistic_checkpoint(out: Path, frames: int) -> Path:
    """CLIP ViT-L/14 at 224 + a ~1B Llama-shaped LLM (2048 wide, 16 layers, 32k vocab), random weights."""
    from transformers import AutoTokenizer

    from videoneva.checkpoint.native import CheckpointSettings, save_checkpoint
    from videoneva.demo.run import DEMO_MODEL
    from videoneva.model.factory import ModelSizes, new_llava

    if (out / "videoneva.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(DEMO_MODEL)  # any tokenizer: speed depends on shapes, not on words
    sizes = ModelSizes(max_position_embeddings=4096)  # the defaults are these shapes (~0.95 B LLM parameters)
    # Fill the tokenizer up to the 32k vocabulary, so that every id a random model picks decodes to text
    # and streams (ids past the tokenizer decode to nothing: no text piece, no TTFT).
    tok.add_tokens([f"<t{i}>" for i in range(len(tok), sizes.vocab_size)])
    llava = new_llava(sizes, image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, seed=0)
    settings = CheckpointSettings(conv_template="nv_dpo", num_frames=frames, model_id="realistic-random")
    save_checkpoint(llava, tok, settings, out)
    return out


def model_checkpoint(name: str, frames: int) -> Path:
    if name == "realistic":
        return realistic_checkpoint(TMP / f"realistic_ckpt_v2_f{frames}", frames)
    from videoneva.demo.run import DEMO_MODEL

    snap = TMP / "demo_ckpt"  # a snapshot: the embedded model may be retrained while this runs
    if snap.exists():
        shutil.rmtree(snap)
    shutil.copytree(DEMO_MODEL, snap)
    return snap


def engine(ckpt: Path, name: str) -> Path:
    out = TMP / f"engine_{name}"
    context = json.loads((ckpt / "config.json").read_text())["text_config"]["max_position_embeddings"]
    assert cli(["build", f"checkpoint={ckpt}", f"output={out}", f"max_input_len={context - 64}", "max_output_len=64",
                "overwrite=true"]) == 0
    return out


def prompt_file(folder: Path, videos: int, seconds: int, width: int, height: int) -> Path:
    """videos distinct H.264 clips (30 fps) and a prompt file asking each clip every question, interleaved."""
    from bench_decode import synthetic_frames

    from videoneva.media.encode import encode_video

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(videos):
        name = f"serve_clip_{i}_{seconds}s_{width}x{height}.mp4"
        if not (folder / name).is_file():
            encode_video(list(synthetic_frames(30 * seconds, height, width, seed=200 + i)), folder / name, "h264", fps=30)
    for q, text in enumerate(QUESTIONS):
        for i in range(videos):
            lines.append({"video": f"serve_clip_{i}_{seconds}s_{width}x{height}.mp4", "text": text,
                          "question_id": q * videos + i})
    p = folder / f"serve_prompts_{videos}x{seconds}s_{width}x{height}.jsonl"
    p.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    return p


STAGES = ("decode_s", "encode_s", "media_s", "first_token_s", "generate_s", "total_s")


def stage_p50(rows: list[dict], level) -> dict:
    """p50 seconds of the server's own stage timings (inside the `videoneva` model) and of the client's e2e.

    decode_s: preprocess (sampled decode + CLIP); encode_s: vision_encoder incl. its batching queue;
    media_s: everything before the llm; generate_s: the llm model incl. streaming and detokenizing;
    total_s: inside the entry model; the client's e2e minus it is gRPC + the wait for a free instance.
    """
    out = {}
    for k in STAGES:
        xs = [r[k] for r in rows if r.get(k) is not None]
        out[k] = float(np.median(xs)) if xs else None
    out["client_e2e_s"] = level.e2e.p50 if level.e2e is not None else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("demo", "realistic"), default="demo")
    ap.add_argument("--concurrency", default="1,2,4,8", help="levels for the server")
    ap.add_argument("--num-requests", type=int, default=8, help="timed requests per level (at least the level)")
    ap.add_argument("--baseline-requests", type=int, default=None, help="timed requests of baseline/pipeline "
                    "(default: --num-requests)")
    ap.add_argument("--tokens", type=int, default=8, help="output tokens per answer (fixed: ignore_eos)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed requests before each level")
    ap.add_argument("--level-warmup", type=int, default=None, help="untimed requests before each server level "
                    "(default: --warmup; the server is also warmed once, see --server-warmup)")
    ap.add_argument("--frames", type=int, default=None, help="frames per video (realistic; the demo model has 8)")
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--size", default="640x360", help="video WIDTHxHEIGHT")
    ap.add_argument("--server-warmup", type=int, default=None, help="untimed requests at the highest level "
                    "before the server's levels: every model instance's first call (default: the highest level)")
    ap.add_argument("--server-threads", type=int, default=1, help="torch threads per server model instance (2 on "
                    "2 cores oversubscribes them: 3.7 vs 1.5 requests/s at concurrency 1 on the demo model)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    levels = [int(x) for x in args.concurrency.split(",")]
    gen = GenSettings(args.tokens, ignore_eos=True)
    insert = DEMO_INSERT  # the demo model's; any works for random weights
    width, height = (int(x) for x in args.size.split("x"))
    machine = machine_info()
    ckpt = model_checkpoint(args.model, args.frames or 2)
    eng = engine(ckpt, args.model)
    prompts = prompt_file(TMP / "serve_media", args.videos, args.seconds, width, height)
    jobs = load_jobs(prompts)
    n_serial = args.baseline_requests or args.num_requests
    targets, cpu, records, stages = {}, {}, {}, {}

    def bench(target, conc: int, n: int, warmup: int = args.warmup):
        meter = CpuMeter()
        recs, s = run_level(target, jobs, conc, max(n, conc), None, warmup)
        cpu.setdefault(target.name, []).append({"concurrency": conc, **meter.read()})
        targets.setdefault(target.name, []).append(s)
        records.setdefault(target.name, []).extend(recs)
        print(f"{target.name} c={conc}: {s.requests_per_s} req/s, {s.errors} errors {s.error_samples[:1]}", flush=True)

    from videoneva.bench.baseline import BaselineTarget

    base = BaselineTarget(ckpt, prompts.parent, gen, insert)
    bench(base, 1, n_serial)
    del base
    gc.collect()

    from videoneva.config import InferConfig, load_config
    from videoneva.runtime.engine import pipeline_from_engine_dir

    cfg = load_config(InferConfig, [f"engine_dir={eng}", f"inference.media_base_path={prompts.parent}", "device=cpu"])
    pipe = PipelineTarget(pipeline_from_engine_dir(eng, cfg, cache_bytes=0), gen, insert)
    bench(pipe, 1, n_serial)
    del pipe
    gc.collect()

    from videoneva.serving import Client
    from videoneva.serving.serve import ServeConfig, start_server

    scfg = load_config(ServeConfig, [f"engine_dir={eng}", "grpc_port=0", "http_port=0", "metrics_port=0",
                                     "cache_bytes=0", f"threads={args.server_threads}",
                                     f"videoneva_instances={max(levels)}", "startup_timeout=600"])
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as work:
        server = start_server(scfg, work)
        try:
            with Client(server.grpc_url, timeout=1800, retries=0) as client:
                tri = ServerTarget(client, gen, prompts.parent, "bytes", insert)
                top = max(levels)
                run_level(tri, jobs, top, args.server_warmup or top, progress=False)  # warm every instance
                for c in levels:
                    before = len(tri.stages)
                    bench(tri, c, args.num_requests, args.warmup if args.level_warmup is None else args.level_warmup)
                    stages[c] = stage_p50(tri.stages[before:], targets["triton"][-1])
        finally:
            server.stop()

    base_rps = targets["baseline"][0].requests_per_s
    ratios = {name: [{"concurrency": s.concurrency,
                      "throughput_over_baseline": (s.requests_per_s / base_rps) if s.requests_per_s and base_rps else None}
                     for s in levels_] for name, levels_ in targets.items()}
    agree = {"pipeline_vs_baseline": same_outputs(records["pipeline"], records["baseline"]),
             "triton_vs_baseline": same_outputs(records["triton"], records["baseline"]),
             "triton_vs_pipeline": same_outputs(records["triton"], records["pipeline"])}
    at8 = next((r["throughput_over_baseline"] for r in ratios["triton"] if r["concurrency"] == 8), None)
    report = {
        "benchmark": f"serving side by side: baseline vs pipeline vs Triton ({args.model} model)",
        "title": f"{args.model} model", "command": command_line(), "created": now_iso(),
        "settings": {**{k: str(v) for k, v in vars(args).items()}, "ignore_eos": True, "greedy": True,
                     "cache_bytes": 0, "insert_media_token": insert, "media": f"{args.videos} H.264 clips, "
                     f"{args.seconds} s {args.size} 30 fps, media sent as bytes to the server"},
        "model": {"checkpoint": str(ckpt), "engine_dir": str(eng),
                  **json.loads((eng / "media.json").read_text())},
        "machine": {**machine, "load_average_end": machine_info()["load_average"]},
        "targets": {name: {"levels": lv, "cpu": cpu[name]} for name, lv in targets.items()},
        "throughput_ratios": ratios, "same_outputs": agree, "server_stages_p50_s": stages,
        "target_triton_c8_over_baseline": {"target": 3.0, "measured": at8,
                                           "met": None if at8 is None else at8 >= 3.0},
    }
    rows = ["| target | concurrency | requests/s | × baseline | machine cores busy |", "|---|---|---|---|---|"]
    for name, lv in targets.items():
        for s, r, c in zip(lv, ratios[name], cpu[name]):
            rps = "—" if s.requests_per_s is None else f"{s.requests_per_s:.3f}"
            x = "—" if r["throughput_over_baseline"] is None else f"{r['throughput_over_baseline']:.2f}×"
            rows.append(f"| {name} | {s.concurrency} | {rps} | {x} | {c['machine_cores_busy']} |")
    agree_s = ", ".join(f"{k.replace('_', ' ')}: {'—' if v is None else f'{v:.0%}'}" for k, v in agree.items())
    srows = ["| concurrency | " + " | ".join(STAGES) + " | client e2e |", "|---" * (len(STAGES) + 2) + "|"]
    for c, st in stages.items():
        srows.append(f"| {c} | " + " | ".join("—" if st[k] is None else f"{st[k] * 1000:.0f}"
                                             for k in (*STAGES, "client_e2e_s")) + " |")
    report["notes_md"] = ["## Throughput side by side", "", *rows, "",
                          "## Where the server's time goes (p50 ms, the server's own timings)", "", *srows, "",
                          "decode_s: preprocess (sampled decode + CLIP preprocessing); encode_s: vision encoder with its "
                          "batching queue; media_s: everything before the llm; generate_s: the llm model (streamed, "
                          "detokenized in the entry model); total_s: inside the entry model; client e2e − total_s = gRPC and the wait for a free "
                          "entry-model instance.", "",
                          f"Same outputs (identical token ids per question): {agree_s}.", "",
                          f"Target: Triton at concurrency 8 ≥ 3× the baseline's throughput: measured "
                          f"{'—' if at8 is None else f'{at8:.2f}×'}.", ""]
    prefix = args.out / f"serving_{args.model}"
    write_report(report, prefix)
    print("\n".join(report["notes_md"]))
    print(f"wrote {prefix}.json / .md / _*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
