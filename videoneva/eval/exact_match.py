"""`videoneva eval-demo output_file=… refs=…`: exact-match accuracy per question type on the demo held-out set.

Answers are compared after normalize_answer (both the prediction and the reference):
  1. lower-case; "colour" -> "color", "grey" -> "gray";
  2. every character that is not a letter or a digit becomes a space (punctuation goes);
  3. the words "a", "an", "the" are dropped, and number words "zero" … "ten" become digits;
  4. whitespace is collapsed and trimmed.
So "A red circle moving left." == "red circle moving left" and "Two" == "2", but "red." != "red
circle" (no partial credit). Every reference counts once: a question whose output line carries an
`error`, has no `pred_answer`, or is missing from the output file counts as wrong and is listed.
When a question_id appears more than once, a line without an error wins over one with an error,
and a later line over an earlier one (resumed runs append). Output lines whose question_id is not in
the refs are ignored and reported.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from videoneva.config import config_help, load_config
from videoneva.errors import ConfigError

ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))}
SPELLINGS = {"colour": "color", "colours": "colors", "grey": "gray"}
TARGETS = {"overall": 0.9, "per_type": 0.8}  # the demo model's acceptance targets (issue text)


def normalize_answer(text: Any) -> str:
    """Canonical form of an answer for exact match (see the module docstring)."""
    words = re.sub(r"[^0-9a-z]+", " ", str(text).lower()).split()
    words = [NUMBER_WORDS.get(w, SPELLINGS.get(w, w)) for w in words if w not in ARTICLES]
    return " ".join(words)


@dataclass
class QuestionResult:
    question_id: Any
    type: str
    answer: str
    pred: Optional[str]
    status: str            # "ok" | "wrong" | "error" | "missing"
    error: Optional[str] = None

    @property
    def correct(self) -> bool:
        return self.status == "ok"


@dataclass
class TypeScore:
    n: int = 0
    correct: int = 0
    errors: int = 0        # output line with an error (or without pred_answer)
    missing: int = 0       # no output line at all

    @property
    def accuracy(self) -> Optional[float]:
        return self.correct / self.n if self.n else None


@dataclass
class Report:
    per_type: dict[str, TypeScore]
    overall: TypeScore
    results: list[QuestionResult]
    unknown_ids: list[Any] = field(default_factory=list)
    duplicate_ids: list[Any] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)

    def meets_targets(self) -> bool:
        accs = [s.accuracy for s in self.per_type.values()]
        return (self.overall.accuracy or 0.0) >= TARGETS["overall"] and all(
            a is not None and a >= TARGETS["per_type"] for a in accs)


def _read_jsonl(path: Path, what: str) -> tuple[list[tuple[int, dict]], list[int]]:
    """(line number, record) for every JSON object line, and the numbers of lines that are not."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    rows, bad = [], []
    for i, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            bad.append(i)
            continue
        if isinstance(rec, dict):
            rows.append((i, rec))
        else:
            bad.append(i)
    return rows, bad


def load_refs(path: str | Path) -> list[dict]:
    """heldout_refs.jsonl: [{"question_id", "answer", "type"}, …]; malformed lines are an error here."""
    p = Path(path)
    rows, bad = _read_jsonl(p, "refs")
    if bad:
        raise ConfigError(f"{p}: lines {bad[:10]} are not JSON objects")
    seen = set()
    for n, r in rows:
        if not {"question_id", "answer", "type"} <= r.keys():
            raise ConfigError(f"{p}:{n}: a ref needs question_id, answer and type, got keys {sorted(r)}")
        if r["question_id"] in seen:
            raise ConfigError(f"{p}:{n}: question_id {r['question_id']!r} appears twice")
        seen.add(r["question_id"])
    return [r for _, r in rows]


def _failed(rec: dict) -> bool:
    return bool(rec.get("error")) or not isinstance(rec.get("pred_answer"), str)


def score(outputs: list[dict], refs: list[dict], bad_lines: Optional[list[int]] = None) -> Report:
    """Exact-match scores per type and overall.

    Args:
        outputs: inference output records (question_id, pred_answer, optional error), file order.
        refs: reference records (question_id, answer, type).
        bad_lines: line numbers of the output file that were not JSON objects (reported only).
    """
    ref_ids = {r["question_id"] for r in refs}
    best: dict[Any, dict] = {}
    seen: set = set()
    duplicates, unknown = [], []
    for rec in outputs:
        qid = rec.get("question_id")
        if qid not in ref_ids:
            if qid not in unknown:
                unknown.append(qid)
            continue
        if qid in seen and qid not in duplicates:
            duplicates.append(qid)
        seen.add(qid)
        if qid not in best or not _failed(rec) or _failed(best[qid]):
            best[qid] = rec
    per_type: dict[str, TypeScore] = {}
    overall = TypeScore()
    results = []
    for ref in refs:
        qid, answer = ref["question_id"], str(ref["answer"])
        rec = best.get(qid)
        if rec is None:
            res = QuestionResult(qid, ref["type"], answer, None, "missing")
        elif _failed(rec):
            err = rec.get("error") or "no pred_answer in the output line"
            res = QuestionResult(qid, ref["type"], answer, rec.get("pred_answer"), "error", str(err))
        else:
            pred = rec["pred_answer"]
            res = QuestionResult(qid, ref["type"], answer, pred,
                                 "ok" if normalize_answer(pred) == normalize_answer(answer) else "wrong")
        results.append(res)
        for s in (per_type.setdefault(ref["type"], TypeScore()), overall):
            s.n += 1
            s.correct += res.correct
            s.errors += res.status == "error"
            s.missing += res.status == "missing"
    return Report(dict(sorted(per_type.items())), overall, results, unknown, duplicates, list(bad_lines or []))


def format_table(report: Report) -> str:
    """Per-type accuracy table with an overall row, and lines on errors / missing / unknown ids."""
    def row(name: str, s: TypeScore) -> str:
        acc = "-" if s.accuracy is None else f"{100 * s.accuracy:6.1f}%"
        return f"{name:<10} {s.n:>6} {s.correct:>8} {acc:>8} {s.errors:>7} {s.missing:>8}"

    lines = [f"{'type':<10} {'n':>6} {'correct':>8} {'acc':>8} {'errors':>7} {'missing':>8}"]
    lines += [row(t, s) for t, s in report.per_type.items()]
    lines += ["-" * len(lines[0]), row("overall", report.overall)]
    errs = [r for r in report.results if r.status == "error"]
    missing = [r.question_id for r in report.results if r.status == "missing"]
    if errs:
        lines.append(f"{len(errs)} output lines with an error (counted wrong): "
                     + "; ".join(f"{r.question_id}: {r.error}" for r in errs[:5]) + (" …" if len(errs) > 5 else ""))
    if missing:
        lines.append(f"{len(missing)} questions missing from the output (counted wrong): {missing[:20]}"
                     + (" …" if len(missing) > 20 else ""))
    if report.unknown_ids:
        lines.append(f"{len(report.unknown_ids)} output question_ids not in the refs (ignored): "
                     f"{report.unknown_ids[:20]}")
    if report.duplicate_ids:
        lines.append(f"{len(report.duplicate_ids)} question_ids answered more than once (best line used)")
    if report.bad_lines:
        lines.append(f"{len(report.bad_lines)} output lines are not JSON objects (ignored): "
                     f"lines {report.bad_lines[:20]}")
    lines.append(f"targets (overall >= {TARGETS['overall']:.0%}, each type >= {TARGETS['per_type']:.0%}): "
                 + ("met" if report.meets_targets() else "not met"))
    return "\n".join(lines)


def report_dict(report: Report, output_file: str, refs: str) -> dict:
    """The JSON report: inputs, per-type and overall scores, targets, every question's result."""
    def score_dict(s: TypeScore) -> dict:
        return {**asdict(s), "accuracy": s.accuracy}

    return {
        "output_file": output_file, "refs": refs,
        "normalization": "lowercase; colour->color, grey->gray; non-alphanumerics -> space; drop a/an/the; "
                         "zero..ten -> digits; collapse whitespace",
        "overall": score_dict(report.overall),
        "per_type": {t: score_dict(s) for t, s in report.per_type.items()},
        "targets": TARGETS, "meets_targets": report.meets_targets(),
        "unknown_ids": report.unknown_ids, "duplicate_ids": report.duplicate_ids, "bad_lines": report.bad_lines,
        "results": [{**asdict(r), "correct": r.correct} for r in report.results],
    }


@dataclass
class EvalConfig:
    output_file: str = field(default="", metadata={"help": "inference output jsonl (question_id, pred_answer, error)"})
    refs: str = field(default="", metadata={"help": "heldout_refs.jsonl from `videoneva demo-data`"})
    report: Optional[str] = field(default=None, metadata={"help": "write the JSON report here"})

    def __post_init__(self) -> None:
        for key in ("output_file", "refs"):
            if not str(getattr(self, key) or "").strip():
                raise ConfigError(f"{key} is required: videoneva eval-demo output_file=ANSWERS.jsonl refs=REFS.jsonl")


def main(argv: list[str]) -> int:
    """`videoneva eval-demo output_file=… refs=… [report=…]`; prints the table, exits 0."""
    if any(a in ("-h", "--help") for a in argv):
        print(config_help(EvalConfig, "videoneva eval-demo: exact-match accuracy per question type"))
        return 0
    cfg = load_config(EvalConfig, argv)
    refs = load_refs(cfg.refs)
    rows, bad = _read_jsonl(Path(cfg.output_file), "output_file")
    report = score([r for _, r in rows], refs, bad)
    print(format_table(report))
    if cfg.report:
        path = Path(cfg.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report_dict(report, cfg.output_file, cfg.refs), indent=1) + "\n")
        print(f"report: {path}")
    return 0
