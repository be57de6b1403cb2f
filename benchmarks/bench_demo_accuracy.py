"""Accuracy of the shipped demo model on a fresh held-out set (issue 3's target: >= 90% overall, >= 80% per type).

Generates scenes with a seed never used for training (default options, so the question mix is the
generator's, not the training set's), answers every question with the real `videoneva infer`
(greedy, the media token placed as in training: DEMO_INSERT) and scores them with `videoneva eval-demo`.
Writes results/demo_accuracy.json (the full report, every answer) and results/demo_accuracy.md.

    python benchmarks/bench_demo_accuracy.py [--n 300] [--seed 777] [--model videoneva/demo/assets/videoneva-demo]
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from videoneva.cli import main as cli
from videoneva.demo.run import DEMO_INSERT, DEMO_MODEL

HERE = Path(__file__).resolve().parent
TRAINING_SEEDS = {1}  # videoneva/demo/train_demo.yaml's data


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="scenes (5 questions each)")
    ap.add_argument("--seed", type=int, default=777, help="data seed (must not be a training seed)")
    ap.add_argument("--model", default=str(DEMO_MODEL), help="checkpoint to score")
    ap.add_argument("--work", default=str(HERE / "results" / "tmp" / "demo_accuracy"), help="scratch folder")
    ap.add_argument("--out", default=str(HERE / "results"), help="where demo_accuracy.{json,md} go")
    a = ap.parse_args(argv)
    if a.seed in TRAINING_SEEDS:
        ap.error(f"--seed {a.seed} was used for training data; choose another")
    work, out = Path(a.work), Path(a.out)
    data = work / "data"
    t0 = time.perf_counter()
    if cli(["demo-data", f"out={data}", f"n={a.n}", f"seed={a.seed}", "heldout_fraction=1.0",
            f"media_token={DEMO_INSERT}"]) != 0:
        return 1
    answers = work / "answers.jsonl"
    if cli(["infer", f"neva_model_file={a.model}", f"prompt_file={data / 'heldout_prompts.jsonl'}",
            f"output_file={answers}", f"inference.media_base_path={data}", "inference.greedy=true",
            "inference.tokens_to_generate=24", f"inference.insert_media_token={DEMO_INSERT}",
            "print_answers=false", "overwrite=true"]) != 0:
        return 1
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "demo_accuracy.json"
    cli(["eval-demo", f"output_file={answers}", f"refs={data / 'heldout_refs.jsonl'}", f"report={report_path}"])
    report = json.loads(report_path.read_text())
    report["run"] = {"command": " ".join(["python benchmarks/bench_demo_accuracy.py", *map(shlex.quote, argv)]), "model": a.model,
                     "seed": a.seed, "scenes": a.n, "seconds": round(time.perf_counter() - t0, 1),
                     "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    rows = [f"| {t} | {v['n']} | {v['correct']} | {100 * v['accuracy']:.1f}% |" for t, v in report["per_type"].items()]
    o = report["overall"]
    md = [f"# Demo model accuracy (fresh seed {a.seed}, {a.n} scenes, greedy `videoneva infer` + `eval-demo`)", "",
          f"`{report['run']['command']}`", "", "| type | n | correct | accuracy |", "|---|---|---|---|", *rows,
          f"| **overall** | {o['n']} | {o['correct']} | **{100 * o['accuracy']:.1f}%** |", "",
          f"Targets: overall >= 90%, each type >= 80%: {'met' if report['meets_targets'] else 'not met'}.", ""]
    (out / "demo_accuracy.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
