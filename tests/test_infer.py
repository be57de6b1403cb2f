"""`videoneva infer` end to end on a tiny checkpoint: seed format, bad lines, resume, exit codes."""
from __future__ import annotations

import json
import os

import pytest

from videoneva.cli import main as cli


def _read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _args(ckpt, media, prompts, out, *extra):
    return ["infer", f"neva_model_file={ckpt}", f"prompt_file={prompts}", f"output_file={out}",
            f"inference.media_base_path={media}", "inference.media_type=video", "inference.insert_media_token=right",
            "inference.tokens_to_generate=6", "inference.greedy=true", *extra]


def test_seed_job_writes_one_line_per_prompt_and_prints_seed_form(tiny_checkpoint, media_dir, prompt_file, tmp_path, capsys):
    prompts = prompt_file([
        {"video": "clip.mp4", "text": "Can you describe the scene?", "category": "conv", "question_id": 0},
        {"video": "clip.webm", "text": "What color is the shape?", "category": "color", "question_id": 1},
        {"image": "still.png", "text": "How many shapes?", "category": "count", "question_id": 2},
    ])
    out = tmp_path / "answers.jsonl"
    assert cli(_args(tiny_checkpoint, media_dir, prompts, out, "inference.all_probs=true")) == 0
    recs = _read(out)
    assert [r["question_id"] for r in recs] == [0, 1, 2]
    for r in recs:
        assert "error" not in r and r["model_id"] == "tiny-videoneva"
        assert r["full_text"] == r["prompt"] + r["raw_response"]
        assert r["prompt"].endswith("<extra_id_1>Assistant\n<extra_id_2>quality:4,toxicity:0,humor:0,creativity:0,"
                                    "helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:4\n")
        assert len(r["logprobs"]) == len(r["tokens"]) and all(lp <= 0 for lp in r["logprobs"])
    assert recs[0]["category"] == "conv" and recs[0]["video"] == "clip.mp4"
    assert recs[0]["metadata"]["num_frames"] == 4 and recs[2]["metadata"]["num_frames"] == 1
    assert "Can you describe the scene?<video>\n<extra_id_1>Assistant" in recs[0]["prompt"]
    printed = capsys.readouterr().out
    assert printed.count("CLEAN RESPONSE: ") == 3
    assert "<extra_id_0>System\nA chat between a curious user" in printed


def test_a_line_sets_its_own_frame_sampling(tiny_checkpoint, media_dir, prompt_file, tmp_path):
    prompts = prompt_file([
        {"video": "clip.mp4", "text": "q", "question_id": 0},
        {"video": "clip.mp4", "text": "q", "question_id": 1, "num_frames": 2},
        {"video": "clip.mp4", "text": "q", "question_id": 2, "splice_single_frame": "last"},
        {"video": "clip.mp4", "text": "q", "question_id": 3, "num_frames": 0},
        {"video": "clip.mp4", "text": "q", "question_id": 4, "splice_single_frame": "centre"},
    ])
    out = tmp_path / "answers.jsonl"
    assert cli(_args(tiny_checkpoint, media_dir, prompts, out)) == 1
    recs = {r["question_id"]: r for r in _read(out)}
    assert [recs[q]["metadata"]["num_frames"] for q in (0, 1, 2)] == [4, 2, 1]
    assert recs[2]["metadata"]["frame_indices"] == [23]  # the last of the clip's 24 frames
    assert "num_frames" in recs[3]["error"] and "splice_single_frame" in recs[4]["error"]


@pytest.fixture()
def bad_media(media_dir, tmp_path):
    """A media root holding the good and broken files plus a symlink that points outside it."""
    root = tmp_path / "root"
    root.mkdir()
    for f in media_dir.iterdir():
        (root / f.name).write_bytes(f.read_bytes())
    outside = tmp_path / "outside.mp4"
    outside.write_bytes((media_dir / "clip.mp4").read_bytes())
    os.symlink(outside, root / "link_out.mp4")
    return root


def test_bad_lines_get_errors_and_the_run_goes_on(tiny_checkpoint, bad_media, prompt_file, tmp_path, capsys):
    lines = [
        {"video": "clip.mp4", "text": "good one", "question_id": "ok1"},
        {"video": "missing.mp4", "text": "q", "question_id": "missing"},
        {"video": "empty.mp4", "text": "q", "question_id": "empty"},
        {"video": "truncated.mp4", "text": "q", "question_id": "truncated"},
        {"video": "random.mp4", "text": "q", "question_id": "random"},
        {"video": "notes.txt", "text": "q", "question_id": "text"},
        {"video": "../outside.mp4", "text": "q", "question_id": "dotdot"},
        {"video": str(tmp_path / "outside.mp4"), "text": "q", "question_id": "absolute"},
        {"video": "link_out.mp4", "text": "q", "question_id": "symlink"},
        "{not json",
        {"video": "clip.mp4", "question_id": "notext"},
        {"text": "no media key", "question_id": "nomedia"},
        {"video": "clip.webm", "text": "good two", "question_id": "ok2"},
    ]
    out = tmp_path / "out.jsonl"
    rc = cli(_args(tiny_checkpoint, bad_media, prompt_file(lines), out))
    assert rc == 1
    recs = _read(out)
    assert len(recs) == len(lines)
    by_id = {r["question_id"]: r for r in recs}
    assert "error" not in by_id["ok1"] and "error" not in by_id["ok2"]
    expect = {"missing": "not found", "empty": "empty", "dotdot": "outside", "absolute": "outside",
              "symlink": "outside", "notext": "question text", "nomedia": "'video'"}
    for qid, word in expect.items():
        assert word in by_id[qid]["error"].lower(), (qid, by_id[qid]["error"])
    for qid in ("truncated", "random", "text"):
        assert by_id[qid]["error"].startswith(f"line "), by_id[qid]
    assert "not valid JSON" in recs[9]["error"] and recs[9]["line"] == 10
    err = capsys.readouterr().err
    assert "11 of 13 lines failed" in err and "Traceback" not in err


def test_resume_keeps_answers_and_retries_failures(tiny_checkpoint, media_dir, prompt_file, tmp_path):
    prompts = prompt_file([
        {"video": "clip.mp4", "text": "a", "question_id": 0},
        {"video": "nope.mp4", "text": "b", "question_id": 1},
        {"video": "clip.avi", "text": "c", "question_id": 2},
    ])
    out = tmp_path / "out.jsonl"
    assert cli(_args(tiny_checkpoint, media_dir, prompts, out)) == 1
    first = {r["question_id"]: r for r in _read(out)}
    # Without resume or overwrite an existing output is refused (nothing lost).
    assert cli(_args(tiny_checkpoint, media_dir, prompts, out)) == 2
    (media_dir / "nope.mp4").write_bytes((media_dir / "clip.mp4").read_bytes())
    try:
        assert cli(_args(tiny_checkpoint, media_dir, prompts, out, "resume=true")) == 0
    finally:
        (media_dir / "nope.mp4").unlink()
    recs = _read(out)
    assert sorted(r["question_id"] for r in recs) == [0, 1, 2]
    again = {r["question_id"]: r for r in recs}
    assert again[0]["answer_id"] == first[0]["answer_id"], "answered lines are kept, not redone"
    assert "error" not in again[1]


def test_prompt_longer_than_context_is_a_line_error(copy_checkpoint, media_dir, prompt_file, tmp_path):
    ckpt = copy_checkpoint()
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["text_config"]["max_position_embeddings"] = 300  # 4 frames × 64 tokens + text do not fit; 1 frame does
    (ckpt / "config.json").write_text(json.dumps(cfg))
    prompts = prompt_file([{"video": "clip.mp4", "text": "q", "question_id": 0},
                           {"image": "still.png", "text": "q", "question_id": 1}])
    out = tmp_path / "out.jsonl"
    assert cli(_args(ckpt, media_dir, prompts, out)) == 1
    r0, r1 = _read(out)
    assert "context is 300" in r0["error"] and "error" not in r1


def test_config_and_checkpoint_errors_exit_2_without_traceback(tiny_checkpoint, media_dir, prompt_file, tmp_path, capsys):
    prompts = prompt_file([{"video": "clip.mp4", "text": "q"}])
    assert cli(_args(tiny_checkpoint, media_dir, prompts, tmp_path / "a.jsonl", "inference.temprature=1")) == 2
    assert cli(_args(tmp_path / "nowhere", media_dir, prompts, tmp_path / "b.jsonl")) == 2
    assert cli(_args(tiny_checkpoint, media_dir, prompts, tmp_path / "c.jsonl", "data.image_token_len=256")) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'inference.temprature'" in err
    assert "checkpoint not found" in err
    assert "data.image_token_len=256 conflicts" in err and "64" in err
    assert "Traceback" not in err


def test_help_lists_seed_keys(capsys):
    assert cli(["infer", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("neva_model_file", "inference.media_base_path", "inference.repetition_penalty",
                "quantization.algorithm", "data.splice_single_frame", "trainer.precision"):
        assert key in out


def test_an_unexpected_exception_fails_only_its_line(tiny_checkpoint, media_dir, prompt_file, tmp_path, capsys,
                                                     caplog, monkeypatch):
    """A fault that is not a VideoNevaError (here injected into one request) is that line's error, with its
    traceback logged; the lines before and after it are answered and the summary names it."""
    from videoneva.runtime.pipeline import Pipeline

    real = Pipeline.answer

    def answer(self, req, sampling, on_token=None):
        if req.text == "boom":
            raise KeyError("injected fault")
        return real(self, req, sampling, on_token)

    monkeypatch.setattr(Pipeline, "answer", answer)
    prompts = prompt_file([{"video": "clip.mp4", "text": "a", "question_id": "a"},
                           {"video": "clip.mp4", "text": "boom", "question_id": "boom"},
                           {"video": "nope.mp4", "text": "b", "question_id": "bad"},
                           {"video": "clip.webm", "text": "c", "question_id": "c"}])
    out = tmp_path / "out.jsonl"
    for concurrency in (1, 2):
        out.unlink(missing_ok=True)
        caplog.clear()
        assert cli(_args(tiny_checkpoint, media_dir, prompts, out, f"concurrency={concurrency}")) == 1
        by_id = {r["question_id"]: r for r in _read(out)}
        assert sorted(by_id) == ["a", "bad", "boom", "c"]
        assert "error" not in by_id["a"] and "error" not in by_id["c"] and "not found" in by_id["bad"]["error"]
        assert "internal error" in by_id["boom"]["error"] and "injected fault" in by_id["boom"]["error"]
        logged = [r for r in caplog.records if r.exc_info and "boom" in r.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info[0] is KeyError
        err = capsys.readouterr().err
        assert "2 of 4 lines failed" in err and "question_id=boom: line 2: internal error" in err
