"""`videoneva train` on CPU: throughput at 1 and 2 processes side by side, and per-process peak memory of the
realistic shape with and without activation checkpointing.

Throughput: the demo recipe (videoneva/demo/train_demo.yaml shapes, isolated multi-turn records of a
fresh `videoneva demo-data` set, tower pretraining and held-out scoring off) at the same global
batch of 8: one process with micro-batch 4 x grad_accum 2 on one thread and on every core, and
two DDP processes (gloo, Fabric's own launcher) with micro-batch 4 x grad_accum 1, the cores
split between them. Runs alternate, `--reps` times each; samples/s and tokens/s (every
non-padding position, media included) over the training loop (media decode of the first epoch
included), and each process's peak RSS. The loss curves are compared too.

Memory: the realistic shape (a ~0.95 B Llama-shaped LLM, 2048 wide x 16 layers, 32k vocabulary,
and CLIP ViT-L/14 at 224 px; random weights built at run time), one process (`--realistic-threads`),
micro-batch 1 of `--realistic-frames` frames x 256 tokens (8, then 2), trainer.precision=32, LoRA on
the LLM (r 16) with the tower frozen, one optimizer step (`--realistic-steps`), with and without
train.activation_checkpointing. A full finetune of this shape in float32 (weights, gradients and
AdamW state: about 16 GB before activations) does not fit next to the other work on this machine,
so LoRA is what is measured. A run whose processes pass `--max-rss-gb` (or 80% of the memory free
at the start) is stopped and reported as larger than that. These runs set glibc's
MALLOC_MMAP_THRESHOLD_ so that the peak RSS follows the live memory (see realistic()).

    python benchmarks/bench_train_dist.py [--scenes 48] [--steps 24] [--reps 2] [--realistic-steps 1]
                                          [--skip-realistic] [--out benchmarks/results]

Results: results/train_dist.{json,md}. Each training run is a `videoneva train` in child processes
started by this script (`--child`), which report their own peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "videoneva" / "demo" / "train_demo.yaml"


def child(report: str, keys: list[str]) -> int:
    """Run `videoneva train keys…` in this process; write this process's peak RSS to report.rankN.json."""
    from videoneva.cli import main as cli

    rc = cli(["train", *keys])
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    Path(f"{report}.rank{rank}.json").write_text(json.dumps({"rank": rank, "peak_rss_bytes": peak, "rc": rc}))
    return rc


def run(keys: list[str], work: Path, name: str, env: dict, max_rss_gb: float = 0.0) -> dict:
    """One `videoneva train` run through --child; its summary plus every process's peak RSS.

    With max_rss_gb > 0 the run is stopped (SIGKILL) when its processes together pass that much
    resident memory, so a run too large for the machine cannot push others out of memory; the
    result then says so ("stopped_at_gb")."""
    import psutil

    report = work / f"{name}.mem"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(report), "--", *keys],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    stopped = None
    while proc.poll() is None:
        try:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            rss = sum(p.memory_info().rss for p in tree) / 2**30
        except psutil.NoSuchProcess:
            continue
        if max_rss_gb and rss > max_rss_gb:
            stopped = rss
            for p in tree:
                p.kill()
            break
        time.sleep(0.5)
    proc.wait()
    reader.join()
    if stopped is not None:
        return {"stopped_at_gb": stopped, "wall_s": time.perf_counter() - t0}
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{''.join(err)[-3000:]}")
    out = Path(next(k.split("=", 1)[1] for k in keys if k.startswith("output_dir=")))
    summary = json.loads((out / "train_summary.json").read_text())
    mems = sorted((json.loads(p.read_text()) for p in work.glob(f"{name}.mem.rank*.json")), key=lambda m: m["rank"])
    return {"summary": summary, "wall_s": time.perf_counter() - t0, "peak_rss_bytes": [m["peak_rss_bytes"] for m in mems]}


def throughput(a, work: Path) -> dict:
    from videoneva.cli import main as cli

    data = work / "demo"
    assert cli(["demo-data", f"out={data}", f"n={a.scenes}", "seed=99", "heldout_fraction=0", "media_token=left",
                "multi_turn=true", "two_shape_fraction=0.6", "image_fraction=0.1", "questions_per_scene=9",
                "extra_types=motion,describe,shape"]) == 0
    base = [f"config={RECIPE}", f"data.data_path={data / 'train.json'}", f"data.video_folder={data}",
            "data.eval_data_path=null", "vision_pretrain.scenes=null", "save_every=0", "log_every=0",
            f"train.max_steps={a.steps}", "train.micro_batch_size=4", "trainer.accelerator=cpu"]
    cores = os.cpu_count() or 1
    # name -> (keys, torch threads per process)
    variants = {"1 process x 1 thread": (["train.grad_accum=2"], 1),
                f"1 process x {cores} threads": (["train.grad_accum=2"], cores),
                "2 processes (DDP) x 1 thread": (["train.grad_accum=1", "trainer.devices=2"], max(1, cores // 2))}
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR")}
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for rep in range(a.reps):
        for i, (name, (extra, threads)) in enumerate(variants.items()):
            out = work / f"tp{rep}_{i}"
            r = run([*base, *extra, f"output_dir={out}"], work, f"tp{rep}_{i}", {**env, "OMP_NUM_THREADS": str(threads)})
            s = r["summary"]
            runs[name].append({"samples_per_s": s["samples"] / s["seconds"], "tokens_per_s": s["tokens"] / s["seconds"],
                               "loop_s": s["seconds"], "samples": s["samples"], "tokens": s["tokens"],
                               "threads_per_process": threads, "peak_rss_gb": [m / 2**30 for m in r["peak_rss_bytes"]],
                               "losses": json.loads((out / "train_summary.json").read_text())["losses"]})
            shutil.rmtree(out)
    names = list(variants)
    curves = [runs[n][-1]["losses"] for n in names]
    diff = max(abs(x - y) / abs(x) for c in curves[1:] for x, y in zip(curves[0], c))
    best = {k: max(v, key=lambda r: r["samples_per_s"]) for k, v in runs.items()}
    two = best[names[2]]["samples_per_s"]
    return {"runs": runs, "best": best, "max_relative_loss_difference": diff,
            "ratio_2p_over_1p1t": two / best[names[0]]["samples_per_s"],
            "ratio_2p_over_1p_all_threads": two / best[names[1]]["samples_per_s"]}


def realistic(a, work: Path) -> dict:
    from transformers import AutoTokenizer

    from videoneva.cli import main as cli
    from videoneva.demo.run import DEMO_MODEL
    from videoneva.model.factory import ModelSizes

    data = work / "real"
    assert cli(["demo-data", f"out={data}", "n=4", "seed=5", "heldout_fraction=0", "image_fraction=0",
                "media_token=left", "frames=16"]) == 0
    tok_dir = work / "tok32k"
    tok = AutoTokenizer.from_pretrained(DEMO_MODEL)  # any tokenizer: memory depends on shapes, not on words
    tok.add_tokens([f"<t{i}>" for i in range(len(tok), ModelSizes().vocab_size)])
    tok.save_pretrained(tok_dir)
    base = [f"data.data_path={data / 'train.json'}", f"data.video_folder={data}",
            "data.frame_token_pool=1", "data.conv_template=nv_dpo", "data.cache_media=false", f"model.tokenizer={tok_dir}",
            *[f"model.{k}={v}" for k, v in vars(ModelSizes()).items()], "train.micro_batch_size=1",
            f"train.max_steps={a.realistic_steps}", "train.warmup_steps=1", "train.lora.enable=true",
            "train.freeze_vision=true", "trainer.precision=32", "trainer.accelerator=cpu", "save_every=0",
            "log_every=1"]
    # glibc raises its mmap threshold (up to 32 MB) as large blocks are freed; the 17 MB activations then
    # come from the heap and freed ones stay resident, so the peak RSS would measure fragmentation. A fixed
    # threshold returns every large block to the system on free: the peak RSS follows the live memory.
    env = {**{k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR")},
           "OMP_NUM_THREADS": str(a.realistic_threads), "MALLOC_MMAP_THRESHOLD_": "131072"}
    import psutil

    limit = min(a.max_rss_gb, 0.8 * psutil.virtual_memory().available / 2**30)
    out = {"rss_limit_gb": limit, "runs": []}
    for frames in a.realistic_frames:
        for ckpt in (True, False):
            run_dir = work / f"real_{frames}_{ckpt}"
            r = run([*base, f"data.num_frames={frames}", f"train.activation_checkpointing={str(ckpt).lower()}",
                     f"output_dir={run_dir}"], work, f"real{frames}{int(ckpt)}", env, limit)
            row = {"frames": frames, "activation_checkpointing": ckpt}
            if "stopped_at_gb" in r:
                row["stopped_at_gb"] = r["stopped_at_gb"]
            else:
                s = r["summary"]
                row.update(peak_rss_gb=r["peak_rss_bytes"][0] / 2**30, loop_s=s["seconds"],
                           tokens_per_step=s["tokens"] / max(1, s["steps"]), loss=s["last_loss"])
            out["runs"].append(row)
            shutil.rmtree(run_dir, ignore_errors=True)
    return out


def write(res: dict, out: Path, cmd: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_dist.json").write_text(json.dumps(res, indent=1))
    lines = ["# `videoneva train`: 1 vs 2 processes, and realistic-shape memory (CPU)", "", f"Command: `{cmd}`", "",
             f"Machine: {os.cpu_count()} CPU cores, torch {res['torch']}, lightning {res['lightning']}.", ""]
    t = res.get("throughput")
    if t:
        lines += ["## Throughput, demo recipe, global batch 8 (runs alternate)", "",
                  "| processes x threads | samples/s | tokens/s | loop s | peak RSS per process (GB) |", "|---|---|---|---|---|"]
        for name, runs in t["runs"].items():
            for r in runs:
                rss = ", ".join(f"{g:.2f}" for g in r["peak_rss_gb"])
                lines.append(f"| {name} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['loop_s']:.1f} | {rss} |")
        lines += ["", f"2 processes / 1 process x 1 thread (best run of each, samples/s): **{t['ratio_2p_over_1p1t']:.2f}x**; "
                  f"2 processes / 1 process on every core: **{t['ratio_2p_over_1p_all_threads']:.2f}x**. Largest relative "
                  f"difference between the loss curves: {t['max_relative_loss_difference']:.1e}.", ""]
    m = res.get("realistic")
    if m:
        lines += ["## Peak memory per process, realistic shape (0.95 B LLM + CLIP ViT-L/14, 256 tokens per frame, "
                  "micro-batch 1, float32, LoRA, tower frozen, one optimizer step)", "",
                  "| frames | activation checkpointing | peak RSS (GB) | loop s | tokens per step |", "|---|---|---|---|---|"]
        for r in m["runs"]:
            if "stopped_at_gb" in r:
                lines.append(f"| {r['frames']} | {r['activation_checkpointing']} | > {r['stopped_at_gb']:.1f} (stopped at "
                             f"the {m['rss_limit_gb']:.1f} GB limit) | - | - |")
            else:
                lines.append(f"| {r['frames']} | {r['activation_checkpointing']} | {r['peak_rss_gb']:.2f} | "
                             f"{r['loop_s']:.0f} | {r['tokens_per_step']:.0f} |")
        lines.append("")
    (out / "train_dist.md").write_text("\n".join(lines))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        return child(argv[1], argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=48, help="demo-data scenes (records) for the throughput runs")
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per throughput run")
    ap.add_argument("--reps", type=int, default=2, help="alternating repetitions of each process count")
    ap.add_argument("--realistic-steps", type=int, default=1, help="optimizer steps of each realistic-shape run")
    ap.add_argument("--realistic-threads", type=int, default=1, help="torch threads of the realistic-shape runs")
    ap.add_argument("--realistic-frames", type=lambda t: [int(x) for x in t.split(",")], default=[8, 2],
                    help="frames per sample of the realistic-shape runs (comma list)")
    ap.add_argument("--max-rss-gb", type=float, default=10.0,
                    help="stop a realistic-shape run past this resident memory (also at most 80%% of what is free)")
    ap.add_argument("--skip-realistic", action="store_true", help="throughput only")
    ap.add_argument("--skip-throughput", action="store_true", help="realistic-shape memory only")
    ap.add_argument("--out", default=str(HERE / "results"), help="where train_dist.{json,md} go")
    a = ap.parse_args(argv)
    import lightning
    import torch

    res: dict = {"torch": torch.__version__, "lightning": lightning.__version__, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        if not a.skip_throughput:
            res["throughput"] = throughput(a, Path(tmp))
        if not a.skip_realistic:
            res["realistic"] = realistic(a, Path(tmp))
    write(res, Path(a.out), "python benchmarks/bench_train_dist.py " + " ".join(argv))
    print((Path(a.out) / "train_dist.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
