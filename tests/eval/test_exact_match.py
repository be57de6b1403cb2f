"""Exact-match evaluator: normalisation, per-type arithmetic, error lines, missing and duplicate ids."""
from __future__ import annotations

import json

import pytest

from videoneva.errors import ConfigError
from videoneva.eval.exact_match import main, normalize_answer, score


@pytest.mark.parametrize("text, norm", [
    ("Red.", "red"), ("  the RED  ", "red"), ("A red circle moving left.", "red circle moving left"),
    ("Two", "2"), ("2", "2"), ("changing colour", "changing color"), ("grey", "gray"),
    ("red, circle!", "red circle"), ("", ""), (3, "3"), ("an apple", "apple"),
])
def test_normalize_answer(text, norm):
    assert normalize_answer(text) == norm


REFS = [
    {"question_id": 0, "answer": "red", "type": "color"},
    {"question_id": 1, "answer": "blue", "type": "color"},
    {"question_id": 2, "answer": "circle", "type": "shape"},
    {"question_id": 3, "answer": "2", "type": "count"},
    {"question_id": 4, "answer": "a red circle moving left.", "type": "describe"},
    {"question_id": 5, "answer": "square", "type": "shape"},
    {"question_id": 6, "answer": "1", "type": "count"},
]
OUTPUT = [
    {"question_id": 0, "pred_answer": "Red."},                                       # ok
    {"question_id": 1, "pred_answer": "green"},                                      # wrong
    {"question_id": 2, "error": "media: cannot decode"},                             # error, then …
    {"question_id": 2, "pred_answer": "circle"},                                     # … a retry: ok
    {"question_id": 3, "pred_answer": "two"},                                        # ok (number word)
    {"question_id": 4, "pred_answer": "A red circle moving left"},                   # ok
    {"question_id": 5, "pred_answer": "square", "error": "timeout"},                 # error wins: counted wrong
    {"question_id": 99, "pred_answer": "red"},                                       # not in refs
    # question 6 missing
]


def test_score_arithmetic():
    rep = score(OUTPUT, REFS)
    assert (rep.overall.n, rep.overall.correct, rep.overall.errors, rep.overall.missing) == (7, 4, 1, 1)
    assert rep.overall.accuracy == pytest.approx(4 / 7)
    acc = {t: (s.n, s.correct, s.errors, s.missing) for t, s in rep.per_type.items()}
    assert acc == {"color": (2, 1, 0, 0), "count": (2, 1, 0, 1), "describe": (1, 1, 0, 0), "shape": (2, 1, 1, 0)}
    status = {r.question_id: r.status for r in rep.results}
    assert status == {0: "ok", 1: "wrong", 2: "ok", 3: "ok", 4: "ok", 5: "error", 6: "missing"}
    assert rep.unknown_ids == [99] and rep.duplicate_ids == [2]
    assert not rep.meets_targets()


def test_success_is_not_replaced_by_a_later_error():
    rep = score([{"question_id": 0, "pred_answer": "red"}, {"question_id": 0, "error": "x"}], REFS[:1])
    assert rep.overall.correct == 1 and rep.meets_targets()


def test_main_prints_table_and_writes_report(tmp_path, capsys):
    out, refs, report = tmp_path / "answers.jsonl", tmp_path / "refs.jsonl", tmp_path / "r" / "acc.json"
    out.write_text("".join(json.dumps(r) + "\n" for r in OUTPUT) + "{not json\n")
    refs.write_text("".join(json.dumps(r) + "\n" for r in REFS))
    assert main([f"output_file={out}", f"refs={refs}", f"report={report}"]) == 0
    text = capsys.readouterr().out
    assert "overall" in text and "57.1%" in text and "missing from the output" in text
    assert "media: cannot decode" not in text and "timeout" in text  # the retried error is not reported
    rep = json.loads(report.read_text())
    assert rep["overall"]["correct"] == 4 and rep["overall"]["accuracy"] == pytest.approx(4 / 7)
    assert rep["per_type"]["shape"] == {"n": 2, "correct": 1, "errors": 1, "missing": 0, "accuracy": 0.5}
    assert rep["bad_lines"] == [9] and rep["unknown_ids"] == [99] and rep["meets_targets"] is False
    assert [r["status"] for r in rep["results"]] == ["ok", "wrong", "ok", "ok", "ok", "error", "missing"]


def test_bad_input(tmp_path):
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps({"question_id": 0, "answer": "red"}) + "\n")
    (tmp_path / "o.jsonl").write_text("")
    with pytest.raises(ConfigError, match="needs question_id, answer and type"):
        main([f"output_file={tmp_path / 'o.jsonl'}", f"refs={refs}"])
    refs.write_text(json.dumps(REFS[0]) + "\n")
    with pytest.raises(ConfigError, match="output_file not found"):
        main([f"output_file={tmp_path / 'nope.jsonl'}", f"refs={refs}"])
    with pytest.raises(ConfigError, match="required"):
        main([f"refs={refs}"])
    with pytest.raises(ConfigError, match="unknown config key"):
        main([f"output_file={tmp_path / 'o.jsonl'}", f"refs={refs}", "refz=1"])
