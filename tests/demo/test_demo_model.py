"""The shipped demo model on questions from a seed never used in training.

The target (issue 3) is >= 90% exact match overall and >= 80% on every question type. It is checked
on 2500 questions (500 scenes): smaller samples are too noisy near the threshold (one answer
moves a type by about 7 points on 60 questions).
"""
from __future__ import annotations

import json

import pytest

from videoneva.cli import main as cli
from videoneva.demo.run import DEMO_INSERT, DEMO_MODEL
from videoneva.eval.exact_match import load_refs, score


SCENES, QUESTIONS = 500, 5


def _fresh_sample_report(tmp_path):
    assert (DEMO_MODEL / "model.safetensors").is_file(), "the demo checkpoint ships with the package"
    assert (DEMO_MODEL / "model.safetensors").stat().st_size <= 20 * 2**20
    data = tmp_path / "data"
    # Seed 4242 is not the training seed (1) nor the demo's; 500 scenes x 5 questions = 2500 questions.
    assert cli(["demo-data", f"out={data}", f"n={SCENES}", "seed=4242", "heldout_fraction=1.0",
                f"questions_per_scene={QUESTIONS}"]) == 0
    out = tmp_path / "answers.jsonl"
    rc = cli(["infer", f"neva_model_file={DEMO_MODEL}", f"prompt_file={data / 'heldout_prompts.jsonl'}",
              f"output_file={out}", f"inference.media_base_path={data}", "inference.greedy=true",
              "inference.tokens_to_generate=24", f"inference.insert_media_token={DEMO_INSERT}", "print_answers=false"])
    assert rc == 0
    outputs = [json.loads(x) for x in out.read_text().splitlines()]
    return score(outputs, load_refs(data / "heldout_refs.jsonl"))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return _fresh_sample_report(tmp_path_factory.mktemp("demo"))


def test_shipped_demo_model_answers_a_fresh_sample(report):
    assert report.overall.n == SCENES * QUESTIONS and report.overall.errors == 0 and report.overall.missing == 0
    assert all(r.pred for r in report.results), "every question gets a non-empty answer"


def test_shipped_demo_model_meets_the_accuracy_target(report):
    per_type = {k: round(v.accuracy, 3) for k, v in report.per_type.items()}
    assert report.overall.accuracy >= 0.9 and min(per_type.values()) >= 0.8, (report.overall.accuracy, per_type)
