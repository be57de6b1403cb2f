"""Vision encoder benchmark: ONNX Runtime vs torch (CPU, fp32), frames per second on a CLIP ViT-L/14 224 tower.

Random weights with the real shapes: CLIP ViT-L/14 at 224 px (24 layers, 1024 wide, 256 patches per
frame) + Video NeVA's mlp2x_gelu projector into a 2048-wide LLM. The ONNX is exported with
engine_build.vision.export_vision_onnx (the build's own path, checked against torch there), then
both backends encode the same [F, 3, 224, 224] batch, alternating which runs first each repetition.
Writes results/vision.json and results/vision.md.
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
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from engine_build.vision import VisionEncoderModule, export_vision_onnx  # noqa: E402
from videoneva.model.factory import ModelSizes, new_llava  # noqa: E402
from videoneva.stats import Stats  # noqa: E402

BACKENDS = ("torch", "onnxruntime")

def clip_l14_sizes(llm_hidden: int) -> ModelSizes:
    """CLIP ViT-L/14 224 tower; the LLM is cut to one tiny layer (only the projector's output width matters)."""
    return ModelSizes(vocab_size=512, image_size=224, patch_size=14, vision_hidden=1024, vision_layers=24,
                      vision_heads=16, vision_intermediate=4096, text_hidden=llm_hidden, text_layers=1,
                      text_heads=16, text_kv_heads=16, text_intermediate=256, max_position_embeddings=512)


def matmul_count(onnx_path: Path) -> int:
    import onnx

    return sum(n.op_type in ("MatMul", "Gemm") for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def run(args: argparse.Namespace) -> dict:
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    load_start = list(os.getloadavg())
    llava = new_llava(clip_l14_sizes(args.llm_hidden), image_token_id=3, seed=args.seed)
    module = VisionEncoderModule(llava, args.pool).eval()
    with tempfile.TemporaryDirectory(prefix="bench_vision_") as tmp:
        path = Path(tmp) / "vision.onnx"
        t0 = time.perf_counter()
        info = export_vision_onnx(llava, path, 224, frame_token_pool=args.pool, check_frames=(1, 2))
        export_total = time.perf_counter() - t0
        print(f"exported + checked in {export_total:.1f} s, max |ort - torch| = {info['max_abs_diff']:.2e}", flush=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        matmuls = matmul_count(path)

        x = torch.randn(args.frames, 3, 224, 224, generator=torch.Generator().manual_seed(args.seed))  # (F, 3, H, W)
        xn = x.numpy()

        def call(backend: str) -> np.ndarray:
            if backend == "torch":
                with torch.inference_mode():
                    return module(x).numpy()
            return sess.run(["features"], {"pixel_values": xn})[0]

        secs: dict[str, list[float]] = {b: [] for b in BACKENDS}
        busy: dict[str, list[float]] = {b: [] for b in BACKENDS}  # CPU seconds / wall seconds of this process
        outs = {}
        for rep in range(args.warmup + args.reps):
            order = BACKENDS if rep % 2 == 0 else BACKENDS[::-1]  # alternate: neither always runs on a warm cache
            for b in order:
                t, c = time.perf_counter(), time.process_time()
                outs[b] = call(b)
                dt, dc = time.perf_counter() - t, time.process_time() - c
                if rep >= args.warmup:
                    secs[b].append(dt)
                    busy[b].append(dc / dt)
                print(f"rep {rep}{' (warm-up)' if rep < args.warmup else ''} {b}: {dt:.2f} s "
                      f"({args.frames / dt:.2f} frames/s, {dc / dt:.2f} cores busy)", flush=True)
        diff = float(np.abs(outs["torch"] - outs["onnxruntime"]).max())
    fps = {b: Stats.of([args.frames / s for s in secs[b]], "frames/s") for b in BACKENDS}
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": vars(args),
        "model": {"tower": "CLIP ViT-L/14, 224 px, random weights", "vision_layers": 24, "vision_hidden": 1024,
                  "projector": f"mlp2x_gelu 1024 -> {args.llm_hidden} -> {args.llm_hidden}",
                  "tokens_per_frame": info["tokens_per_frame"], "dtype": "float32"},
        "onnx": {"opset": info["opset"], "bytes": info["onnx_bytes"], "export_seconds": info["export_seconds"],
                 "export_and_check_seconds": round(export_total, 1), "max_abs_diff_export_check": info["max_abs_diff"],
                 "matmul_nodes": matmuls, "clip_layers_in_graph": (matmuls - 2) // 8},  # 8 per layer + 2 projector
        "max_abs_diff_benchmark_batch": diff,
        "seconds_per_call": {b: asdict(Stats.of(secs[b], "s")) for b in BACKENDS},
        # below `threads` means the process did not get its cores: another job was running
        "cores_busy": {b: asdict(Stats.of(busy[b], "cpu s / wall s")) for b in BACKENDS},
        "frames_per_second": {b: asdict(fps[b]) for b in BACKENDS},
        "ratio_p50_onnxruntime_over_torch": fps["onnxruntime"].p50 / fps["torch"].p50,
        "ratio_best_onnxruntime_over_torch": fps["onnxruntime"].max / fps["torch"].max,
        "machine": {"cpu": platform.processor() or platform.machine(), "usable_cpus": len(os.sched_getaffinity(0)),
                    "load_average_at_start": load_start, "load_average_at_end": list(os.getloadavg()), "python": platform.python_version(),
                    **{p: metadata.version(p) for p in ("torch", "onnxruntime", "onnx", "transformers")}},
    }


def write_markdown(r: dict, path: Path) -> None:
    s = r["settings"]
    fps, spc = r["frames_per_second"], r["seconds_per_call"]
    busy = r["cores_busy"]
    rows = "\n".join(f"| {b} | {fps[b]['p50']:.2f} | {fps[b]['min']:.2f} | {fps[b]['max']:.2f} | "
                     f"{spc[b]['p50']:.2f} | {busy[b]['p50']:.2f} |" for b in BACKENDS)
    m = r["machine"]
    path.write_text(f"""# Vision encoder benchmark: ONNX Runtime vs torch (CPU, fp32)

Reproduce:

```
{r['command']}
```

{r['model']['tower']} + {r['model']['projector']}, {r['model']['tokens_per_frame']} tokens per frame, fp32.
{s['frames']} frames per call, {s['reps']} timed repetitions after {s['warmup']} warm-up, backends alternated
(which one runs first flips every repetition); {s['threads']} intra-op threads for both. "cores busy" is
this process's CPU time / wall time per call: below {s['threads']} means another job took cores during the call.

| backend | frames/s p50 | min | max | s per call p50 | cores busy p50 |
|---|---|---|---|---|---|
{rows}

**ONNX Runtime / torch (p50 frames/s): {r['ratio_p50_onnxruntime_over_torch']:.2f}x** (best repetition of each:
{r['ratio_best_onnxruntime_over_torch']:.2f}x; the best is the less contention-sensitive estimate on a shared machine).

Outputs agree: max |ort - torch| = {r['max_abs_diff_benchmark_batch']:.1e} on the benchmark batch
({r['onnx']['max_abs_diff_export_check']:.1e} in the export check with 1 and 2 frames). The ONNX graph
(opset {r['onnx']['opset']}, {r['onnx']['bytes'] / 2**20:.0f} MiB, {r['onnx']['matmul_nodes']} MatMul/Gemm nodes) took
{r['onnx']['export_and_check_seconds']} s to export and check. The ONNX graph computes {r['onnx']['clip_layers_in_graph']} of the 24 CLIP
layers (8 MatMuls per layer + 2 in the projector): the last layer's output is unused (features come from the
penultimate one) and the exporter drops it, while the torch module still runs it.

Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs shared with other jobs (load average
{[round(x, 2) for x in m['load_average_at_start']]} at the start, {[round(x, 2) for x in m['load_average_at_end']]} at the end); torch {m['torch']}, onnxruntime {m['onnxruntime']},
transformers {m['transformers']}, Python {m['python']}. Created {r['created']}. All samples are in vision.json.
""")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=4, help="frames per encoder call (one video)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per backend")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="intra-op threads (both)")
    p.add_argument("--pool", type=int, default=1, choices=(1, 2, 4), help="frame_token_pool")
    p.add_argument("--llm-hidden", type=int, default=2048, help="projector output width")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "results", help="folder for vision.json and vision.md")
    args = p.parse_args(argv)
    r = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vision.json").write_text(json.dumps(r, indent=2, default=str) + "\n")
    write_markdown(r, args.out / "vision.md")
    print(f"torch {r['frames_per_second']['torch']['p50']:.2f} frames/s, onnxruntime "
          f"{r['frames_per_second']['onnxruntime']['p50']:.2f} frames/s, ratio "
          f"{r['ratio_p50_onnxruntime_over_torch']:.2f}x -> {args.out / 'vision.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
