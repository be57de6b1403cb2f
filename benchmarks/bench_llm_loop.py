"""LLM decode, side by side in one run: transformers' generate(), videoneva's loop on torch, and the
same loop on ONNX Runtime (llm.backend=onnx: the graph with the KV cache as inputs and outputs).

The shipped demo LLM (3 layers, 192 wide) on the demo's prompt shape: a few text tokens, then
2 frames x 64 visual rows (random rows of the projector's scale), then the question. For each
answer length, the three are timed in turn (their order rotated each repetition) with the same
greedy settings and stop strings the server uses; their token ids must be identical. The
generate() call is the one the torch backend made before (the GenerationConfig that
videoneva.generation maps the settings to). The ONNX graph is exported here by the engine build's
own function, with --threads ONNX Runtime threads. Writes results/llm_loop.json and results/llm_loop.md.

    python benchmarks/bench_llm_loop.py [--reps 30] [--threads 1] [--lengths 1,3,8]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from engine_build.llm import extract_causal_lm
from engine_build.llm_onnx import export_llm_onnx
from videoneva.checkpoint.native import load_checkpoint
from videoneva.demo.run import DEMO_MODEL
from videoneva.generation import SamplingSettings, generation_config
from videoneva.prompts import stop_strings
from videoneva.runtime.onnx_backend import OnnxLanguageModel
from videoneva.runtime.torch_backend import TorchLanguageModel
from videoneva.stats import Stats

HERE = Path(__file__).resolve().parent


def transformers_generate(llm: TorchLanguageModel, ids: list[int], table: torch.Tensor, s: SamplingSettings) -> list[int]:
    """The torch backend's former path: model.generate() on inputs_embeds with the mapped config."""
    embeds, real = llm.embed(ids, table)
    gc = generation_config(s, llm.tokenizer)
    with torch.inference_mode():
        out = llm.model.generate(input_ids=real, inputs_embeds=embeds, attention_mask=torch.ones_like(real),
                                 generation_config=gc, tokenizer=llm.tokenizer)
    new = out.sequences[0, real.shape[1]:].tolist()
    stops = set(gc.eos_token_id or [])
    return new[:-1] if new and new[-1] in stops else new


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and ONNX Runtime threads (the server's llm model uses 1 in the benchmarks)")
    ap.add_argument("--lengths", default="1,3,8", help="answer lengths in tokens (min = max, so both run them all)")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ck = load_checkpoint(DEMO_MODEL)
    llm = TorchLanguageModel(ck.model, ck.tokenizer)
    onnx_dir = HERE / "results" / "tmp" / "llm_onnx"  # rewritten each run
    lm = extract_causal_lm(ck.model)
    export_llm_onnx(lm, onnx_dir)
    ort_llm = OnnxLanguageModel(onnx_dir, lm.config, ck.tokenizer, llm.image_token_id, threads=args.threads)
    text = ck.tokenizer("User\nWhat is the shape doing?", add_special_tokens=False)["input_ids"]
    rows = 2 * 64
    ids = text[:8] + [llm.vocab_size + i for i in range(rows)] + text[8:] + text[:12]
    table = torch.randn(rows, llm.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.05
    base = SamplingSettings(greedy=True, repetition_penalty=1.2, end_strings=list(stop_strings(ck.settings.conv_template)))
    runs = {"generate": lambda s: transformers_generate(llm, ids, table, s),
            "loop": lambda s: llm.generate(ids, table, s).token_ids,
            "onnx": lambda s: ort_llm.generate(ids, table, s).token_ids}
    rows_out, same = [], True
    for n in [int(x) for x in args.lengths.split(",")]:
        s = replace(base, max_tokens=n, min_tokens=n)
        got = {k: f(s) for k, f in runs.items()}
        row_same = got["loop"] == got["generate"] == got["onnx"]
        same &= row_same
        t = {k: [] for k in runs}
        names = list(runs)
        for r in range(args.reps + 2):
            for which in names[r % 3:] + names[: r % 3]:
                t0 = time.perf_counter()
                runs[which](s)
                if r >= 2:  # two warm-up rounds
                    t[which].append(time.perf_counter() - t0)
        st = {k: Stats.of(v) for k, v in t.items()}
        rows_out.append({"tokens": n, **{k: asdict(v) for k, v in st.items()},
                         "speedup_p50": st["generate"].p50 / st["loop"].p50,
                         "onnx_vs_loop_p50": st["loop"].p50 / st["onnx"].p50, "same_ids": row_same})
    report = {
        "benchmark": "LLM decode: transformers generate() vs videoneva's loop on torch and on ONNX Runtime, demo LLM, batch 1",
        "command": "python benchmarks/bench_llm_loop.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "prompt_tokens": len(ids), "threads": args.threads, "reps": args.reps, "rows": rows_out, "same_ids": same,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "llm_loop.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [f"# LLM decode: generate() vs own loop on torch and on ONNX Runtime ({report['date']})", "",
          f"`{report['command']}` on {report['machine']['platform']}, {report['machine']['cpus']} CPUs, "
          f"{args.threads} thread(s); demo LLM, {len(ids)}-token prompt, greedy, repetition penalty 1.2.", "",
          "| answer tokens | generate() p50 (ms) | torch loop p50 (ms) | ONNX Runtime loop p50 (ms) | "
          "loop vs generate() | ONNX vs torch loop | same ids |", "|---|---|---|---|---|---|---|"]
    for r in rows_out:
        md.append(f"| {r['tokens']} | {1000 * r['generate']['p50']:.1f} | {1000 * r['loop']['p50']:.1f} | "
                  f"{1000 * r['onnx']['p50']:.1f} | {r['speedup_p50']:.2f}× | **{r['onnx_vs_loop_p50']:.2f}×** | "
                  f"{'yes' if r['same_ids'] else 'NO'} |")
    (out / "llm_loop.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
