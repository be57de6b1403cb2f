"""`make demo`: fresh held-out synthetic videos → the seed's inference job on the embedded demo model → accuracy."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from videoneva.cli import main as cli
from videoneva.eval.exact_match import normalize_answer

DEMO_MODEL = Path(__file__).parent / "assets" / "videoneva-demo"
DEMO_INSERT = "left"  # where the demo model saw the media token in training (demo-data media_token=left)
DEMO_SEED = 20261125  # never used for training data (training used seed 1; see videoneva/demo/train_demo.yaml)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def print_side_by_side(output_file: Path, refs_file: Path) -> None:
    """One line per question: type, question, model answer, reference, ✓/✗."""
    refs = {r["question_id"]: r for r in _read_jsonl(refs_file)}
    print(f"\n{'type':<10} {'question':<44} {'answer':<28} {'reference':<28} ok")
    for rec in _read_jsonl(output_file):
        ref = refs.get(rec.get("question_id"), {})
        ans = rec.get("pred_answer", f"ERROR: {rec.get('error')}")
        ok = "✓" if "pred_answer" in rec and normalize_answer(ans) == normalize_answer(ref.get("answer", "")) else "✗"
        print(f"{ref.get('type', '?'):<10} {rec.get('text', '')[:44]:<44} {ans[:28]:<28} {str(ref.get('answer'))[:28]:<28} {ok}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="outputs/demo", help="working folder (data, answers, report)")
    ap.add_argument("--n", type=int, default=12, help="number of synthetic scenes to generate")
    ap.add_argument("--seed", type=int, default=DEMO_SEED, help="data seed (must differ from training's)")
    ap.add_argument("--model", default=str(DEMO_MODEL), help="checkpoint to run")
    args = ap.parse_args(argv)
    out = Path(args.out)
    data = out / "data"
    if not Path(args.model).is_dir():
        print(f"demo: model not found at {args.model}", file=sys.stderr)
        return 2
    print(f"== 1/3 synthetic held-out videos (seed {args.seed}) -> {data}", file=sys.stderr)
    rc = cli(["demo-data", f"out={data}", f"n={args.n}", f"seed={args.seed}", "heldout_fraction=1.0"])
    if rc:
        return rc
    answers = out / "answers.jsonl"
    print(f"== 2/3 videoneva infer on {args.model}", file=sys.stderr)
    rc = cli(["infer", f"neva_model_file={args.model}", f"prompt_file={data / 'heldout_prompts.jsonl'}",
              f"output_file={answers}", f"inference.media_base_path={data}", "inference.media_type=video",
              "inference.greedy=true", "inference.tokens_to_generate=24", f"inference.insert_media_token={DEMO_INSERT}",
              "overwrite=true", "print_answers=false"])
    if rc not in (0, 1):
        return rc
    print_side_by_side(answers, data / "heldout_refs.jsonl")
    print("\n== 3/3 accuracy", file=sys.stderr)
    return cli(["eval-demo", f"output_file={answers}", f"refs={data / 'heldout_refs.jsonl'}",
                f"report={out / 'accuracy.json'}"])


if __name__ == "__main__":
    sys.exit(main())
