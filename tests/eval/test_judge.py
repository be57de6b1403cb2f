"""`videoneva judge` against a scripted fake OpenAI-compatible server on 127.0.0.1."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from videoneva.eval import judge
from videoneva.eval.judge_io import SYSTEM_PROMPT, JudgeInputError
from videoneva.eval.judge_scores import format_summary, parse_scores, summarize

pytestmark = pytest.mark.timeout(120)

SECRET = "nvapi-TEST-SECRET-0123456789abcdef"
QUESTIONS = [
    {"question_id": 0, "image": "a.jpg", "text": "What is the landmark?", "category": "conv"},
    {"question_id": 1, "image": "b.jpg", "text": "What colour is the car?", "category": "conv"},
    {"question_id": 2, "image": "a.jpg", "text": "Describe the photo in detail.", "category": "detail"},
]
CONTEXT = [
    {"id": "a", "image": "a.jpg", "caption": ["A volcanic crater by the sea.", "Blue sky."]},
    {"id": "b", "image": "b.jpg", "caption": "A red car on a street."},
]
ANSWERS_GPT = [  # llava-bench answer format, with answer ids
    {"question_id": i, "prompt": q["text"], "answer_id": f"gpt-{i}", "model_id": "gpt-4-0314", "metadata": {},
     "text": f"gpt answer {i}"} for i, q in enumerate(QUESTIONS)]
RESPONSES_OURS = [{"response_id": i, "response": f"our answer {i}"} for i in range(len(QUESTIONS))]


# ----------------------------------------------------------------------------- fake server

def ok(text):
    return (200, {"id": "x", "object": "chat.completion",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                               "finish_reason": "stop"}]}, {})


def status(code, headers=None, body=None):
    return (code, body or {"error": f"scripted {code}"}, headers or {})


class FakeJudge:
    """Replies scripted per question (matched by the question text in the prompt), in order."""

    def __init__(self):
        self.script: dict[str, list] = {}
        self.requests: list[tuple[dict, dict]] = []   # (headers, JSON body)
        self.exhausted: list[str] = []
        self.delay_s = 0.0
        self.inflight = self.max_inflight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.inflight += 1
                    fake.max_inflight = max(fake.max_inflight, fake.inflight)
                    fake.requests.append((dict(self.headers), body))
                    question = body["messages"][1]["content"].split("[Question]\n", 1)[1].split("\n", 1)[0]
                    replies = fake.script.get(question, [])
                    if replies:
                        code, payload, headers = replies.pop(0)
                    else:   # an unexpected request: a non-retryable error, so the test fails loudly
                        fake.exhausted.append(question)
                        code, payload, headers = 418, {"error": "no scripted reply"}, {}
                if callable(payload):   # e.g. echo the request's headers back
                    payload = payload(self.headers)
                time.sleep(fake.delay_s)
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                with fake.lock:
                    fake.inflight -= 1

            def log_message(self, *args):   # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def count(self, question_text: str) -> int:
        return sum(1 for _, b in self.requests if f"[Question]\n{question_text}\n" in b["messages"][1]["content"])

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture()
def fake():
    server = FakeJudge()
    yield server
    server.stop()


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture()
def bench(tmp_path, fake, monkeypatch):
    """Input files and an argv builder pointed at the fake server, with the API key in the env."""
    monkeypatch.setenv("API_TOKEN", SECRET)
    d = tmp_path / "bench"
    d.mkdir()
    files = {"q": write_jsonl(d / "questions.jsonl", QUESTIONS), "c": write_jsonl(d / "context.jsonl", CONTEXT),
             "a1": write_jsonl(d / "answers_gpt4.jsonl", ANSWERS_GPT),
             "a2": write_jsonl(d / "ours.jsonl", RESPONSES_OURS),
             "out": tmp_path / "reviews.jsonl", "answers": tmp_path / "answers"}

    def argv(*extra):
        return ["--model-name-list", "gpt", "ours", "--media-type", "image", "--question-file", str(files["q"]),
                "--responses-list", str(files["a1"]), str(files["a2"]), "--answers-dir", str(files["answers"]),
                "--context-file", str(files["c"]), "--output", str(files["out"]), "--api-base", fake.url,
                "--retry-backoff", "0.01", "--max-retries", "3", *extra]

    files["argv"] = argv
    return files


def reviews(path: Path) -> dict:
    return {json.loads(ln)["question_id"]: json.loads(ln) for ln in path.read_text().splitlines()}


def assert_no_secret(tmp_path: Path, *texts: str):
    for t in texts:
        assert SECRET not in t
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="replace"), f


# ----------------------------------------------------------------------------- end to end

def test_scores_retries_summary_and_no_key_leak(bench, fake, tmp_path, capsys, caplog):
    rule_file = tmp_path / "rule.json"
    rule_file.write_text(json.dumps({"llava_bench_conv": {"role": "Assistant", "prompt": "Rate conv."},
                                     "llava_bench_detail": {"role": "Helper", "prompt": "Rate detail."}}))
    fake.script = {
        "What is the landmark?": [ok("8 9\nBoth fine, the second is better.")],
        "What colour is the car?": [status(429, {"Retry-After": "0"}), ok("8, 6\nThe first is right.")],
        "Describe the photo in detail.": [status(500), status(503), ok("Score: 7/10 and 10/10\nDetails.")],
    }
    fake.delay_s = 0.1
    assert judge.main(bench["argv"]("--rule-file", str(rule_file), "--concurrency", "2")) == 0
    out, err = capsys.readouterr()
    # Hand-computed: all (8+8+7)/3 = 7.667 -> 76.7, (9+6+10)/3 = 8.333 -> 83.3;
    # conv (8+8)/2 -> 80.0, (9+6)/2 -> 75.0; detail 70.0, 100.0.
    assert out.splitlines() == ["all 76.7 83.3", "llava_bench_conv 80.0 75.0", "llava_bench_detail 70.0 100.0"]
    assert not fake.exhausted
    assert [fake.count(q["text"]) for q in QUESTIONS] == [1, 2, 3]
    assert fake.max_inflight <= 2

    revs = reviews(bench["out"])
    assert {k: v["tuple"] for k, v in revs.items()} == {0: [8.0, 9.0], 1: [8.0, 6.0], 2: [7.0, 10.0]}
    r2 = revs[2]
    assert r2["category"] == "llava_bench_detail" and r2["id"] == 3 and r2["answer1_id"] == "gpt-2"
    assert r2["content"].startswith("Score: 7/10") and r2["parsed"] is True and r2["model2"] == "ours"
    assert set(r2) >= {"id", "question_id", "answer1_id", "answer2_id", "category", "content", "tuple"}

    # The request: NeMo's sampling and system message, LLaVA's user-message layout.
    headers, body = next((h, b) for h, b in fake.requests if "[Question]\nDescribe" in b["messages"][1]["content"])
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert body["model"] == "mistralai/mixtral-8x7b-instruct-v0.1"
    assert (body["temperature"], body["top_p"], body["seed"], body["max_tokens"]) == (0.2, 0.7, 42, 1024)
    assert body["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert body["messages"][1]["content"] == (
        "[Context]\nA volcanic crater by the sea.\nBlue sky.\n\n[Question]\nDescribe the photo in detail.\n\n"
        "[Helper 1]\ngpt answer 2\n\n[End of Helper 1]\n\n[Helper 2]\nour answer 2\n\n[End of Helper 2]\n\n"
        "[System]\nRate detail.\n\n")

    # Normalised answers saved in the llava-bench answer shape; generated ids are stable.
    saved = [json.loads(ln) for ln in (bench["answers"] / "ours_answer.jsonl").read_text().splitlines()]
    assert [(a["question_id"], a["prompt"], a["text"], a["model_id"]) for a in saved] == [
        (q["question_id"], q["text"], f"our answer {i}", "ours") for i, q in enumerate(QUESTIONS)]
    assert [json.loads(ln)["answer_id"] for ln in (bench["answers"] / "answers_gpt4_answer.jsonl").open()] == [
        "gpt-0", "gpt-1", "gpt-2"]
    assert revs[0]["answer2_id"] == saved[0]["answer_id"] and len(saved[0]["answer_id"]) == 22

    assert_no_secret(tmp_path, out, err, caplog.text)


def test_unparseable_retried_once_excluded_then_resumed(bench, fake, capsys):
    fake.script = {
        "What is the landmark?": [ok("8 9")],
        "What colour is the car?": [ok("I think both answers are fine."), ok("Both good.\n8 9")],
        "Describe the photo in detail.": [ok("Let me think."), ok("7 10\nok")],
    }
    assert judge.main(bench["argv"]()) == 0
    out = capsys.readouterr().out.splitlines()
    # The unparseable review is excluded from the means (NeMo would average in its -1s):
    # all (8+7)/2 -> 75.0, (9+10)/2 -> 95.0; conv 80.0 90.0; detail 70.0 100.0.
    assert out[:3] == ["all 75.0 95.0", "llava_bench_conv 80.0 90.0", "llava_bench_detail 70.0 100.0"]
    assert out[3].startswith("unparseable 1 of 3 reviews")
    revs = reviews(bench["out"])
    assert revs[1]["tuple"] == [-1, -1] and revs[1]["parsed"] is False and revs[1]["attempts"] == 2
    assert revs[2]["tuple"] == [7.0, 10.0] and revs[2]["attempts"] == 2
    retry = [b for _, b in fake.requests if "[Question]\nWhat colour" in b["messages"][1]["content"]]
    assert "seed" in retry[0] and "seed" not in retry[1]   # the retry samples afresh

    # Rerun: only the unparseable review is requested again.
    fake.requests.clear()
    fake.script = {"What colour is the car?": [ok("6 8")]}
    assert judge.main(bench["argv"]()) == 0
    assert len(fake.requests) == 1 and not fake.exhausted
    # all (8+6+7)/3 -> 70.0, (9+8+10)/3 -> 90.0; conv (8+6)/2 -> 70.0, (9+8)/2 -> 85.0.
    assert capsys.readouterr().out.splitlines() == [
        "all 70.0 90.0", "llava_bench_conv 70.0 85.0", "llava_bench_detail 70.0 100.0"]
    assert len(bench["out"].read_text().splitlines()) == 4


def test_persistent_500_left_missing_then_resumed(bench, fake, capsys):
    fake.script = {
        "What is the landmark?": [ok("8 9")],
        "What colour is the car?": [ok("6 7")],
        "Describe the photo in detail.": [status(500)] * 3 + [status(502)],   # 1 try + 3 retries
    }
    assert judge.main(bench["argv"]()) == 1
    out, err = capsys.readouterr()
    # all and conv: (8+6)/2 -> 70.0, (9+7)/2 -> 80.0; detail has no review yet.
    assert out.splitlines() == ["all 70.0 80.0", "llava_bench_conv 70.0 80.0", "llava_bench_detail n/a n/a",
                                "missing 1 of 3 reviews (requests failed; rerun the same command)"]
    assert "1 request(s) failed after retries" in err and "HTTP 502" in err
    assert sorted(reviews(bench["out"])) == [0, 1]   # the completed ones were written

    fake.requests.clear()
    fake.script = {"Describe the photo in detail.": [ok("4 4")]}
    assert judge.main(bench["argv"]()) == 0
    assert len(fake.requests) == 1 and not fake.exhausted
    # (8+6+4)/3 = 6.0 -> 60.0, (9+7+4)/3 = 6.667 -> 66.7
    assert capsys.readouterr().out.splitlines() == [
        "all 60.0 66.7", "llava_bench_conv 70.0 80.0", "llava_bench_detail 40.0 40.0"]


def test_resume_is_keyed_by_answers_and_survives_a_cut_last_line(bench, fake, capsys):
    fake.script = {q["text"]: [ok("5 5")] for q in QUESTIONS}
    assert judge.main(bench["argv"]()) == 0
    with bench["out"].open("a") as fh:
        fh.write('{"id": 9, "question_id": 1, "ans')   # a write cut by a crash
    fake.requests.clear()
    assert judge.main(bench["argv"]()) == 0
    assert fake.requests == []
    assert all(json.loads(ln) for ln in bench["out"].read_text().splitlines())

    # A changed answer gets a new id, so only that question is reviewed again (not positional).
    rows = [dict(r) for r in RESPONSES_OURS]
    rows[2]["response"] = "a new answer"
    write_jsonl(bench["a2"], rows[::-1])   # order does not matter either
    fake.script = {"Describe the photo in detail.": [ok("5 9")]}
    assert judge.main(bench["argv"]()) == 0
    assert len(fake.requests) == 1 and not fake.exhausted
    assert capsys.readouterr().out.splitlines()[-1] == "llava_bench_detail 50.0 90.0"


def test_chunks_review_their_share_only(bench, fake, capsys):
    fake.script = {"Describe the photo in detail.": [ok("3 4")]}
    assert judge.main(bench["argv"]("--num-chunks", "2", "--chunk-idx", "1")) == 0
    assert not fake.exhausted and len(fake.requests) == 1
    assert capsys.readouterr().out.splitlines() == ["all 30.0 40.0", "llava_bench_detail 30.0 40.0"]
    assert (bench["answers"] / "ours_answer_chunk1of2.jsonl").exists()


def test_refused_key_stops_the_run_without_leaking_it(bench, fake, tmp_path, capsys, caplog):
    from videoneva import cli

    echo = status(401, body=lambda h: {"error": "bad key", "got": h["Authorization"]})
    fake.script = {q["text"]: [echo] for q in QUESTIONS}
    assert cli.main(["judge", *bench["argv"]("--concurrency", "1")]) == 2
    out, err = capsys.readouterr()
    assert "HTTP 401" in err and "***" in err and "--api-key-env" in err
    assert len(fake.requests) == 1   # no point sending the others
    assert_no_secret(tmp_path, out, err, caplog.text)


def test_missing_key_for_the_nvidia_catalog(bench, monkeypatch):
    monkeypatch.delenv("API_TOKEN")
    argv = bench["argv"]()
    argv[argv.index("--api-base") + 1] = "https://integrate.api.nvidia.com/v1"
    with pytest.raises(JudgeInputError, match="set the environment variable API_TOKEN"):
        judge.main(argv)   # raised before any request: the catalog is never contacted


def test_api_key_env_must_be_a_name(bench, capsys):
    with pytest.raises(JudgeInputError) as exc:
        judge.main(bench["argv"]("--api-key-env", SECRET))
    assert SECRET not in str(exc.value)


def test_help_describes_the_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        judge.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model-name-list", "--responses-list", "--answers-dir", "--context-file", "--rule-file",
                 "--api-base", "--judge-model", "--api-key-env", "--concurrency", "--num-chunks", "--chunk-idx",
                 "--max-tokens", "reuses"):
        assert flag in text


# ----------------------------------------------------------------------------- bad inputs

def _edit(files, which, rows):
    write_jsonl(files[which], rows)


@pytest.mark.parametrize("which,rows,expected", [
    ("a2", RESPONSES_OURS[:1] + [{"response_id": 99, "response": "x"}] + RESPONSES_OURS[2:],
     r"ours\.jsonl:2: response_id 99 matches no question_id"),
    ("a2", RESPONSES_OURS[:2] + [{"id": 2, "answer": "x"}],
     r"ours\.jsonl:3: expected .*fields present: \['answer', 'id'\]"),
    ("a1", ANSWERS_GPT[:1] + [{"question_id": 1, "answer_id": "g"}] + ANSWERS_GPT[2:],
     r"answers_gpt4\.jsonl:2: missing field 'text'"),
    ("a2", RESPONSES_OURS[:2], r"ours\.jsonl: no answer for question_id 2 \(.*questions\.jsonl:3\)"),
    ("a2", RESPONSES_OURS + [{"response_id": "1", "response": "again"}], r"ours\.jsonl:4: a second answer .*line 2"),
    ("a2", RESPONSES_OURS[:1] + ["{not json"], r"ours\.jsonl:2: not valid JSON"),
    ("q", QUESTIONS[:1] + [{"question_id": 1, "image": "b.jpg", "category": "conv"}] + QUESTIONS[2:],
     r"questions\.jsonl:2: missing field 'text'"),
    ("q", QUESTIONS[:2] + [dict(QUESTIONS[2], category="weird")],
     r"questions\.jsonl:3: category 'llava_bench_weird' is not in the rule file"),
    ("q", QUESTIONS[:2] + [dict(QUESTIONS[2], image="zzz.jpg")],
     r"questions\.jsonl:3: image 'zzz\.jpg' has no line in the context file"),
    ("q", QUESTIONS + [dict(QUESTIONS[0])], r"questions\.jsonl:4: question_id 0 already used on line 1"),
    ("c", CONTEXT[:1] + [{"image": "b.jpg"}], r"context\.jsonl:2: field 'caption' must be"),
])
def test_bad_files_name_the_line(bench, fake, which, rows, expected):
    _edit(bench, which, rows)
    with pytest.raises(JudgeInputError, match=expected):
        judge.main(bench["argv"]())
    assert fake.requests == []   # checked before any request


def test_a_line_names_its_media_with_the_media_type_field_or_the_other_one(bench, fake):
    """--media-type video reads an image line's `image` (a set may mix both); a line with neither is refused."""
    from videoneva.eval.judge_io import read_contexts, read_questions

    assert [q.media for q in read_questions(bench["q"], "video")] == [q["image"] for q in QUESTIONS]
    assert read_contexts(bench["c"], "video") == read_contexts(bench["c"], "image")
    _edit(bench, "q", [{k: v for k, v in q.items() if k != "image"} for q in QUESTIONS])
    with pytest.raises(JudgeInputError, match=r"questions\.jsonl:1: missing field 'video' \(--media-type video\)"):
        judge.main(bench["argv"]("--media-type", "video"))
    assert fake.requests == []


# ----------------------------------------------------------------------------- pure functions

@pytest.mark.parametrize("reply,expected", [
    ("8 9", (8, 9)),
    ("8 9\nAssistant 1 was vague; Assistant 2 was precise.", (8, 9)),
    ("8, 9", (8, 9)),
    ("8,9", (8, 9)),
    ("7.5 8.5", (7.5, 8.5)),
    ("Score: 8/10 and 9/10", (8, 9)),
    ("8/10, 10/10", (8, 10)),
    ("Assistant 1: 6, Assistant 2: 9", (6, 9)),
    ("Scores for Assistant 1 and 2: 3 4", (3, 4)),
    ("**8** **9**", (8, 9)),
    ("(8, 9)", (8, 9)),
    ("[7, 3]", (7, 3)),
    ("8 out of 10 and 6 out of 10", (8, 6)),
    ("\n\n  5 6  \nrest", (5, 6)),
    ("I give 8 and 9.", (8, 9)),
    ("", None),
    (None, None),
    ("Both answers are good.", None),
    ("8", None),
    ("8 9 10", None),
    ("85 90", None),          # not on the 1-10 scale
    ("Here are the scores:\n8 9", None),   # the rules ask for the scores on the first line
])
def test_parse_scores(reply, expected):
    assert parse_scores(reply) == expected


def _llava_reference(tuples):
    # The arithmetic as LLaVA's summarize_gpt_review.py (NeMo's copy) prints it, written out here.
    mean = np.asarray(tuples).mean(0).tolist()
    mean = [round(x, 3) for x in mean]
    return round(mean[0] * 10, 1), round(mean[1] * 10, 1)


def test_summary_arithmetic_matches_hand_values_and_llava():
    revs = [{"category": "llava_bench_conv", "tuple": [8, 9]},
            {"category": "llava_bench_conv", "tuple": [7, 4]},
            {"category": "llava_bench_detail", "tuple": [6, 10]},
            {"category": "llava_bench_detail", "tuple": [-1, -1]},                # NeMo-style unparseable
            {"category": "llava_bench_complex", "tuple": [1, 2], "parsed": False}]  # ours
    s = summarize(revs)
    # all: (8+7+6)/3 = 7.0 -> 70.0, (9+4+10)/3 = 7.667 -> 76.7; conv 7.5 -> 75.0, 6.5 -> 65.0.
    assert format_summary(s).splitlines() == [
        "all 70.0 76.7", "llava_bench_complex n/a n/a", "llava_bench_conv 75.0 65.0",
        "llava_bench_detail 60.0 100.0",
        "unparseable 2 of 5 reviews (no score pair on the judge's first line; excluded from the means, "
        "requested again on the next run)"]
    rng = np.random.default_rng(0)
    for n in range(1, 40):
        tuples = rng.integers(1, 11, size=(n, 2)).astype(float).tolist()
        row = summarize([{"category": "c", "tuple": t} for t in tuples]).rows[0]
        assert (row.score1, row.score2) == _llava_reference(tuples)
