"""Serving benchmark, side by side in one run: the plain baseline vs the in-process pipeline vs Triton.

Same model, same prompts, greedy decoding, fixed output lengths (ignore_eos) for all three:
  baseline   videoneva.bench.baseline: what a NeMo user writes: decord reads only the sampled
             frames (random access), LlavaProcessor, LlavaForConditionalGeneration.generate,
             one request at a time
  pipeline   videoneva's in-process Pipeline on the engine directory (sampled-frame decode,
             ONNX Runtime vision, torch LLM), one request at a time
  triton     `videoneva serve` on the same engine directory, over gRPC with media sent as bytes,
             at each concurrency level
The feature cache is off everywhere (cache_bytes=0): every request decodes and encodes its video,
as the baseline does (the cache has its own benchmark). The baseline and the pipeline serve one
request at a time by construction, so they run at concurrency 1; the server runs every level. The
server's own stage timings at each level say where a request's time goes.

  python benchmarks/bench_serving.py --model demo      # the embedded demo model (copied first)
  python benchmarks/bench_serving.py --model realistic # CLIP ViT-L/14 224 + a ~1B Llama, random weights

Targets (demo model): Triton at concurrency 1 >= 1.0x the baseline with 8-token answers, and at
concurrency 8 >= 3x with 64-token answers. Writes results/serving_<model>.json, .md and two PNG plots.
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


def engine(ckpt: Path, name: str, max_output: int = 64) -> Path:
    out = TMP / f"engine_{name}"
    context = json.loads((ckpt / "config.json").read_text())["text_config"]["max_position_embeddings"]
    assert cli(["build", f"checkpoint={ckpt}", f"output={out}", f"max_input_len={context - max_output}",
                f"max_output_len={max_output}", "overwrite=true"]) == 0
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
    ap.add_argument("--tokens", default="8,64", help="output tokens per answer, comma-separated (fixed: ignore_eos)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed requests before each level")
    ap.add_argument("--level-warmup", type=int, default=None, help="untimed requests before each server level "
                    "(default: --warmup; the server is also warmed once, see --server-warmup)")
    ap.add_argument("--frames", type=int, default=None, help="frames per video (realistic; the demo model has 8)")
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--size", default="640x360", help="video WIDTHxHEIGHT")
    ap.add_argument("--server-warmup", type=int, default=None, help="untimed requests at the highest level "
                    "before the server's levels: every model instance's first call (default: the highest level)")
    ap.add_argument("--server-threads", type=int, default=None, help="intra-op threads of the llm model (default: 1 "
                    "for the demo model, whose small matrices lose to 2 threads' synchronisation; 2 for the "
                    "realistic shape, compute-bound like the baseline, which uses both cores)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    levels = [int(x) for x in args.concurrency.split(",")]
    lengths = [int(x) for x in args.tokens.split(",")]
    insert = DEMO_INSERT  # the demo model's; any works for random weights
    width, height = (int(x) for x in args.size.split("x"))
    machine = machine_info()
    ckpt = model_checkpoint(args.model, args.frames or 2)
    eng = engine(ckpt, args.model, max(lengths))
    prompts = prompt_file(TMP / "serve_media", args.videos, args.seconds, width, height)
    jobs = load_jobs(prompts)
    n_serial = args.baseline_requests or args.num_requests
    levels_of, cpu, records, stages = {}, {}, {}, {}  # keyed by (target, tokens)

    def bench(target, tokens: int, conc: int, n: int, warmup: int = args.warmup):
        target.gen = GenSettings(tokens, ignore_eos=True)
        meter = CpuMeter()
        recs, s = run_level(target, jobs, conc, max(n, conc), None, warmup)
        cpu.setdefault((target.name, tokens), []).append({"concurrency": conc, **meter.read()})
        levels_of.setdefault((target.name, tokens), []).append(s)
        records.setdefault((target.name, tokens), []).extend(recs)
        print(f"{target.name} {tokens} tokens c={conc}: {s.requests_per_s} req/s, {s.errors} errors "
              f"{s.error_samples[:1]}", flush=True)

    from videoneva.bench.baseline import BaselineTarget

    base = BaselineTarget(ckpt, prompts.parent, GenSettings(lengths[0], ignore_eos=True), insert)
    for t in lengths:
        bench(base, t, 1, n_serial)
    del base
    gc.collect()

    from videoneva.config import InferConfig, load_config
    from videoneva.runtime.engine import pipeline_from_engine_dir

    cfg = load_config(InferConfig, [f"engine_dir={eng}", f"inference.media_base_path={prompts.parent}", "device=cpu"])
    pipe = PipelineTarget(pipeline_from_engine_dir(eng, cfg, cache_bytes=0), GenSettings(lengths[0], ignore_eos=True),
                          insert)
    for t in lengths:
        bench(pipe, t, 1, n_serial)
    del pipe
    gc.collect()

    from videoneva.serving import Client
    from videoneva.serving.serve import ServeConfig, start_server

    scfg = load_config(ServeConfig, [f"engine_dir={eng}", "grpc_port=0", "http_port=0", "metrics_port=0",
                                     "cache_bytes=0", f"threads={args.server_threads or (1 if args.model == 'demo' else 2)}",
                                     f"videoneva_instances={max(levels)}", "startup_timeout=600"])
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as work:
        server = start_server(scfg, work)
        try:
            with Client(server.grpc_url, timeout=1800, retries=0) as client:
                tri = ServerTarget(client, GenSettings(lengths[0], ignore_eos=True), prompts.parent, "bytes", insert)
                top = max(levels)
                run_level(tri, jobs, top, args.server_warmup or top, progress=False)  # warm every instance
                for t in lengths:
                    for c in levels:
                        before = len(tri.stages)
                        bench(tri, t, c, args.num_requests,
                              args.warmup if args.level_warmup is None else args.level_warmup)
                        stages[(t, c)] = stage_p50(tri.stages[before:], levels_of[("triton", t)][-1])
        finally:
            server.stop()

    def over_baseline(name: str, t: int, conc: int):
        b = levels_of[("baseline", t)][0].requests_per_s
        s = next((x for x in levels_of[(name, t)] if x.concurrency == conc), None)
        return s.requests_per_s / b if s is not None and s.requests_per_s and b else None

    headline = [{"tokens": t, "baseline_rps": levels_of[("baseline", t)][0].requests_per_s,
                 "pipeline": over_baseline("pipeline", t, 1), "triton_c1": over_baseline("triton", t, 1),
                 "triton_c8": over_baseline("triton", t, 8)} for t in lengths]
    agree = {t: {"pipeline_vs_baseline": same_outputs(records[("pipeline", t)], records[("baseline", t)]),
                 "triton_vs_baseline": same_outputs(records[("triton", t)], records[("baseline", t)])} for t in lengths}
    wanted = {"triton_c1_over_baseline_at_8_tokens": (8, "triton_c1", 1.0),
              "triton_c8_over_baseline_at_64_tokens": (64, "triton_c8", 3.0)}
    targets = {}
    for key, (t, col, goal) in wanted.items():
        got = next((h[col] for h in headline if h["tokens"] == t), None)
        targets[key] = {"target": goal, "measured": got, "met": None if got is None else got >= goal}
    report = {
        "benchmark": f"serving side by side: baseline vs pipeline vs Triton ({args.model} model)",
        "title": f"{args.model} model", "command": command_line(), "created": now_iso(),
        "settings": {**{k: str(v) for k, v in vars(args).items()}, "ignore_eos": True, "greedy": True,
                     "cache_bytes": 0, "insert_media_token": insert, "media": f"{args.videos} H.264 clips, "
                     f"{args.seconds} s {args.size} 30 fps, media sent as bytes to the server"},
        "model": {"checkpoint": str(ckpt), "engine_dir": str(eng), **json.loads((eng / "media.json").read_text())},
        "machine": {**machine, "load_average_end": machine_info()["load_average"]},
        "targets": {f"{name} {t} tokens": {"levels": lv, "cpu": cpu[(name, t)]} for (name, t), lv in levels_of.items()},
        "headline": headline, "same_outputs": agree,
        "server_stages_p50_s": {f"{t} tokens, c={c}": st for (t, c), st in stages.items()},
        "goals": targets,
    }
    f = lambda v, spec=".2f", unit="×": "—" if v is None else f"{v:{spec}}{unit}"  # noqa: E731
    head = ["| answer | baseline req/s | pipeline | Triton c1 | Triton c8 |", "|---|---|---|---|---|"]
    head += [f"| {h['tokens']} tokens | {f(h['baseline_rps'], '.2f', '')} | {f(h['pipeline'])} | {f(h['triton_c1'])} | "
             f"{f(h['triton_c8'])} |" for h in headline]
    rows = ["| answer | target | concurrency | requests/s | × baseline | machine cores busy |", "|---|---|---|---|---|---|"]
    for (name, t), lv in levels_of.items():
        for s, c in zip(lv, cpu[(name, t)]):
            rows.append(f"| {t} | {name} | {s.concurrency} | {f(s.requests_per_s, '.3f', '')} | "
                        f"{f(over_baseline(name, t, s.concurrency))} | {c['machine_cores_busy']} |")
    srows = ["| answer | concurrency | " + " | ".join(STAGES) + " | client e2e | e2e − total |",
             "|---" * (len(STAGES) + 4) + "|"]
    for (t, c), st in stages.items():
        gap = None if st["client_e2e_s"] is None or st["total_s"] is None else st["client_e2e_s"] - st["total_s"]
        srows.append(f"| {t} | {c} | " + " | ".join("—" if st[k] is None else f"{st[k] * 1000:.1f}"
                                                    for k in (*STAGES, "client_e2e_s")) +
                     f" | {'—' if gap is None else f'{gap * 1000:.1f}'} |")
    agree_s = "; ".join(f"{t} tokens: " + ", ".join(f"{k.replace('_', ' ')} {'—' if v is None else f'{v:.0%}'}"
                                                     for k, v in a.items()) for t, a in agree.items())
    goals_s = "; ".join(f"{k.replace('_', ' ')} ≥ {v['target']}×: measured {f(v['measured'])}"
                        for k, v in targets.items())
    report["notes_md"] = ["## Throughput over the baseline", "", *head, "", "## Every level", "", *rows, "",
                          "## Where a request's time goes (p50 ms, the server's own timings)", "", *srows, "",
                          "decode_s: preprocess (sampled decode + CLIP preprocessing); encode_s: vision encoder with its "
                          "batching queue; media_s: everything before the llm; first_token_s: from the request's start "
                          "in the entry model to the llm's first token; generate_s: the llm model (streamed, detokenized "
                          "in the entry model); total_s: inside the entry model; e2e − total: gRPC both ways, the "
                          "request's copy into the entry model and the wait for a free entry-model thread.", "",
                          f"Identical token ids per question: {agree_s}.", "", f"Targets: {goals_s}.", ""]
    prefix = args.out / f"serving_{args.model}"
    write_report(report, prefix)
    print("\n".join(report["notes_md"]))
    print(f"wrote {prefix}.json / .md / _*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
