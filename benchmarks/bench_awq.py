"""AWQ accuracy: the demo model's held-out exact match, unquantized vs AWQ W4A16, side by side.

Builds two engine directories from one checkpoint (`videoneva build`, then the same with
quantization.enable=true: modelopt AWQ calibrated on the checkpoint's own training samples,
exported as a TensorRT-LLM checkpoint), answers the same held-out prompt file with each
(`videoneva infer engine_dir=…`: ONNX Runtime vision + the torch LLM, the AWQ weights
dequantized from rank0.safetensors), and scores both with `videoneva eval-demo`.
Target (issue 4): AWQ within 2 points of the unquantized model. Writes results/awq_demo.{json,md}.

    python benchmarks/bench_awq.py --data DIR [--checkpoint CKPT] [--group-size 64]

--data is a `videoneva demo-data` output (its heldout_prompts.jsonl and heldout_refs.jsonl).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from videoneva.cli import main as cli
from videoneva.demo.run import DEMO_INSERT, DEMO_MODEL

HERE = Path(__file__).resolve().parent


def _answer_and_score(engine: Path, data: Path, work: Path, name: str) -> dict:
    answers = work / f"{name}.jsonl"
    rc = cli(["infer", f"engine_dir={engine}", f"prompt_file={data / 'heldout_prompts.jsonl'}", f"output_file={answers}",
              f"inference.media_base_path={data}", "inference.greedy=true", "inference.tokens_to_generate=24",
              f"inference.insert_media_token={DEMO_INSERT}", "print_answers=false", "overwrite=true", "device=cpu"])
    if rc not in (0, 1):
        raise SystemExit(f"infer on {engine} failed with exit code {rc}")
    report = work / f"{name}_accuracy.json"
    cli(["eval-demo", f"output_file={answers}", f"refs={data / 'heldout_refs.jsonl'}", f"report={report}"])
    return json.loads(report.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a demo-data output folder (held-out prompts + refs)")
    ap.add_argument("--checkpoint", default=str(DEMO_MODEL), help="native checkpoint (default: the demo model)")
    ap.add_argument("--group-size", type=int, default=64, help="AWQ group size (64 divides the demo's 192-wide layers)")
    ap.add_argument("--out", default=str(HERE / "results"), help="where awq_demo.{json,md} go")
    args = ap.parse_args(argv)
    data = Path(args.data)
    with tempfile.TemporaryDirectory(prefix="videoneva-awq-") as tmp:
        work = Path(tmp)
        common = [f"checkpoint={args.checkpoint}", "max_input_len=960", "max_output_len=64"]
        if cli(["build", *common, f"output={work / 'fp32'}"]) != 0:
            return 2
        if cli(["build", *common, f"output={work / 'awq'}", "quantization.enable=true",
                f"quantization.group_size={args.group_size}"]) != 0:
            return 2
        manifest = json.loads((work / "awq" / "manifest.json").read_text())
        results = {name: _answer_and_score(work / name, data, work, name) for name in ("fp32", "awq")}
    delta = results["awq"]["overall"]["accuracy"] - results["fp32"]["overall"]["accuracy"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_awq.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    record = {"command": command, "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "checkpoint": args.checkpoint, "group_size": args.group_size, "llm": manifest.get("llm"),
              "overall_delta_points": round(100 * delta, 2), "target_points": 2.0,
              "met": abs(delta) <= 0.02, "results": results}
    (out / "awq_demo.json").write_text(json.dumps(record, indent=1) + "\n")
    types = sorted(results["fp32"]["per_type"])
    rows = ["| model | overall | " + " | ".join(types) + " |", "|---" * (len(types) + 2) + "|"]
    for name in ("fp32", "awq"):
        r = results[name]
        rows.append(f"| {name} | {100 * r['overall']['accuracy']:.1f}% | "
                    + " | ".join(f"{100 * r['per_type'][t]['accuracy']:.1f}%" for t in types) + " |")
    n = results["fp32"]["overall"]["n"]
    md = [f"# AWQ W4A16 vs unquantized, demo held-out set ({record['when']})", "", f"`{command}`", "",
          f"{n} held-out questions, greedy, exact match; AWQ group size {args.group_size}, calibrated by "
          "`videoneva build` on the checkpoint's own training samples; the AWQ weights run dequantized in torch.", "",
          *rows, "", f"**AWQ - unquantized: {100 * delta:+.1f} points** (target: within 2 points; "
          f"{'met' if record['met'] else 'missed'})."]
    (out / "awq_demo.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
