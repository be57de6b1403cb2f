"""Judge inputs and outputs: question, response, context, rule and review files, read strictly."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

from videoneva.errors import VideoNevaError

logger = logging.getLogger(__name__)

DEFAULT_RULE_FILE = Path(__file__).with_name("rule.json")
CATEGORY_PREFIX = "llava_bench_"   # rule key = prefix + question category, as in LLaVA and NeMo
MEDIA_TYPES = ("image", "video")
# The system message LLaVA's eval_gpt_review_bench.py and NeMo's mixtral_eval.py both send.
SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."

IdKey = Union[int, str]


class JudgeInputError(VideoNevaError):
    """A question, response, context, rule or review file is malformed; the message names file and line."""


@dataclass(frozen=True)
class Question:
    """One line of the question file."""

    line_no: int
    question_id: Any    # as written in the file (kept in the outputs)
    key: IdKey          # normalised id used to join answers and reviews
    text: str
    category: str       # rule key, e.g. "llava_bench_conv"
    media: str          # the question's image/video field: the key into the context file


@dataclass(frozen=True)
class Answer:
    """One normalised answer, saved under --answers-dir in the llava-bench answer shape."""

    question_id: Any
    prompt: str
    text: str
    answer_id: str
    model_id: str
    metadata: dict


@dataclass(frozen=True)
class Rule:
    """One rule-file entry: how to name the two answers and what to ask the judge."""

    role: str
    prompt: str


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(1-based line number, object) for each non-blank line of a .jsonl file.

    Args:
        path: the file; a missing file, invalid JSON or a non-object line raises JudgeInputError.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise JudgeInputError(f"{p}: file not found")
    rows = []
    with p.open(encoding="utf-8") as fh:
        for line_no, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise JudgeInputError(f"{p}:{line_no}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(rec, dict):
                raise JudgeInputError(f"{p}:{line_no}: expected a JSON object, got {type(rec).__name__}")
            rows.append((line_no, rec))
    return rows


def id_key(value: Any, where: str) -> IdKey:
    """Normalise a question id so 3, "3" and 3.0 join (NeMo compares int(id) == int(resp_id))."""
    if isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        return value
    elif isinstance(value, float) and value.is_integer():
        return int(value)
    elif isinstance(value, str) and value.strip():
        s = value.strip()
        return int(s) if re.fullmatch(r"-?\d+", s) else s
    raise JudgeInputError(f"{where}: id {value!r} is not an integer or a non-empty string")


def _need_str(rec: dict, key: str, where: str, allow_empty: bool = False) -> str:
    if key not in rec:
        raise JudgeInputError(f"{where}: missing field {key!r} (fields present: {sorted(rec)})")
    val = rec[key]
    if not isinstance(val, str) or (not allow_empty and not val.strip()):
        raise JudgeInputError(f"{where}: field {key!r} must be a {'' if allow_empty else 'non-empty '}string, "
                              f"got {val!r}")
    return val


def media_field(rec: dict, media_type: str, where: str) -> str:
    """The field naming a line's media: media_type's, else the other one (a set that mixes videos and
    images, as Video NeVA's do)."""
    for name in (media_type, *(t for t in MEDIA_TYPES if t != media_type)):
        if name in rec:
            return name
    raise JudgeInputError(f"{where}: missing field {media_type!r} (--media-type {media_type}); "
                          f"fields present: {sorted(rec)}")


def read_questions(path: str | Path, media_type: str) -> list[Question]:
    """The question file: {"question_id", "text", "category", <media_type>: "001.jpg", ...} per line.

    Args:
        path: the .jsonl question file (llava-bench-in-the-wild/questions.jsonl).
        media_type: "image" or "video": the field that names the media, looked up in the context file.
    """
    p = Path(path).expanduser()
    out: list[Question] = []
    seen: dict[IdKey, int] = {}
    for line_no, rec in read_jsonl(p):
        where = f"{p}:{line_no}"
        if "question_id" not in rec:
            raise JudgeInputError(f"{where}: missing field 'question_id' (fields present: {sorted(rec)})")
        key = id_key(rec["question_id"], where)
        if key in seen:
            raise JudgeInputError(f"{where}: question_id {rec['question_id']!r} already used on line {seen[key]}")
        seen[key] = line_no
        text = _need_str(rec, "text", where)
        category = _need_str(rec, "category", where)
        media = _need_str(rec, media_field(rec, media_type, where), where)
        rule_key = category if category.startswith(CATEGORY_PREFIX) else CATEGORY_PREFIX + category
        out.append(Question(line_no, rec["question_id"], key, text, rule_key, media))
    if not out:
        raise JudgeInputError(f"{p}: no questions")
    return out


def chunk(items: list, num_chunks: int, chunk_idx: int) -> list:
    """NeMo's split: ceil(len/n) items per chunk; an index past the last chunk gets nothing (NeMo crashes)."""
    size = math.ceil(len(items) / num_chunks)
    return items[chunk_idx * size:(chunk_idx + 1) * size]


def _stable_answer_id(model_name: str, question_id: Any, text: str) -> str:
    # NeMo draws a random shortuuid per run; a content hash keeps reruns resumable and changes
    # when the answer changes, so an edited answer is reviewed again.
    digest = hashlib.sha256(json.dumps([model_name, question_id, text]).encode("utf-8")).hexdigest()
    return digest[:22]


def read_answers(path: str | Path, model_name: str, questions: list[Question], wanted: list[Question],
                 question_file: str | Path) -> list[Answer]:
    """One response file normalised, in the order of `wanted`.

    Accepts both seed formats per line: {"question_id", "prompt", "answer_id", "model_id", "metadata",
    "text"} (llava-bench answers) and {"response_id", "response"}, and `videoneva infer`'s output
    lines ({"question_id", "pred_answer", …}, where "text" is the question). Answers are joined to
    questions by id, not by position.

    Args:
        path: the response file.
        model_name: the name given in --model-name-list (becomes model_id, as in NeMo).
        questions: every question in the question file (an answer to an unknown id is an error).
        wanted: the questions of this chunk; each must have exactly one answer.
        question_file: named in the errors.
    """
    p = Path(path).expanduser()
    by_key = {q.key: q for q in questions}
    found: dict[IdKey, tuple[int, dict, str]] = {}
    for line_no, rec in read_jsonl(p):
        where = f"{p}:{line_no}"
        if "response_id" in rec:
            id_field, text_field = "response_id", "response"
        elif "question_id" in rec and "pred_answer" in rec:  # videoneva infer's output
            id_field, text_field = "question_id", "pred_answer"
        elif "question_id" in rec:
            id_field, text_field = "question_id", "text"
        else:
            raise JudgeInputError(
                f"{where}: expected {{\"response_id\", \"response\"}} or {{\"question_id\", \"text\", ...}}; "
                f"fields present: {sorted(rec)}")
        key = id_key(rec[id_field], where)
        if key not in by_key:
            raise JudgeInputError(f"{where}: {id_field} {rec[id_field]!r} matches no question_id in {question_file}")
        if key in found:
            raise JudgeInputError(f"{where}: a second answer for question_id {rec[id_field]!r} "
                                  f"(first on line {found[key][0]})")
        found[key] = (line_no, rec, _need_str(rec, text_field, where, allow_empty=True))
    missing = [q for q in wanted if q.key not in found]
    if missing:
        q = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise JudgeInputError(f"{p}: no answer for question_id {q.question_id!r} ({question_file}:{q.line_no}){more}")
    answers = []
    for q in wanted:
        _, rec, text = found[q.key]
        given = rec.get("answer_id")
        answer_id = given if isinstance(given, str) and given else _stable_answer_id(model_name, q.question_id, text)
        meta = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
        answers.append(Answer(q.question_id, q.text, text, answer_id, model_name, meta))
    return answers


def answer_file_paths(answers_dir: str | Path, response_files: list[str], model_names: list[str],
                      num_chunks: int = 1, chunk_idx: int = 0) -> list[Path]:
    """Where the normalised answers go: NeMo's `<base>_answer<ext>`, made distinct when needed.

    Args:
        answers_dir: --answers-dir.
        response_files: the two --responses-list files.
        model_names: the two model names; added to the names when both files share a basename.
        num_chunks, chunk_idx: a chunk tag is added when the job is split.
    """
    bases = [os.path.splitext(os.path.basename(f)) for f in response_files]
    clash = len({b for b, _ in bases}) < len(bases)
    tag = f"_chunk{chunk_idx}of{num_chunks}" if num_chunks > 1 else ""
    paths = []
    for (base, ext), name in zip(bases, model_names):
        label = f"_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}" if clash else ""
        paths.append(Path(answers_dir).expanduser() / f"{base}{label}_answer{tag}{ext or '.jsonl'}")
    if len(set(paths)) < len(paths):
        raise JudgeInputError(f"both answer files would be written to {paths[0]}; give the two models distinct names")
    return paths


def write_answers(path: Path, answers: list[Answer]) -> None:
    """Write normalised answers atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for a in answers:
            fh.write(json.dumps(asdict(a), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_contexts(path: str | Path, media_type: str) -> dict[str, str]:
    """Media name -> caption text; a list caption is joined with newlines (LLaVA's `cap_str`).

    Args:
        path: the context file (llava-bench-in-the-wild/context.jsonl: {"id", "image", "caption"}).
        media_type: the field naming the media, as in the question file.
    """
    p = Path(path).expanduser()
    out: dict[str, str] = {}
    for line_no, rec in read_jsonl(p):
        where = f"{p}:{line_no}"
        media = _need_str(rec, media_field(rec, media_type, where), where)
        cap = rec.get("caption")
        if isinstance(cap, list) and all(isinstance(c, str) for c in cap):
            cap = "\n".join(cap)
        if not isinstance(cap, str):
            raise JudgeInputError(f"{where}: field 'caption' must be a string or a list of strings, got {cap!r}")
        out[media] = cap   # a repeated media name: the last line wins, as in LLaVA's dict
    return out


def load_rules(path: str | Path) -> dict[str, Rule]:
    """A rule file: {"llava_bench_conv": {"role": "Assistant", "prompt": "..."}, ...}."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise JudgeInputError(f"{p}: rule file not found")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise JudgeInputError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise JudgeInputError(f"{p}: expected an object of rules, got {type(raw).__name__}")
    rules = {}
    for key, val in raw.items():
        if not (isinstance(val, dict) and isinstance(val.get("role"), str) and isinstance(val.get("prompt"), str)):
            raise JudgeInputError(f"{p}: rule {key!r} must be {{\"role\": str, \"prompt\": str}}, got {val!r}")
        rules[key] = Rule(val["role"], val["prompt"])
    return rules


def review_content(context: str, question: str, answer1: str, answer2: str, rule: Rule) -> str:
    """The judge's user message, laid out exactly as LLaVA's eval_gpt_review_bench.py does."""
    role = rule.role
    return (f"[Context]\n{context}\n\n"
            f"[Question]\n{question}\n\n"
            f"[{role} 1]\n{answer1}\n\n[End of {role} 1]\n\n"
            f"[{role} 2]\n{answer2}\n\n[End of {role} 2]\n\n"
            f"[System]\n{rule.prompt}\n\n")


def review_key(question_id: Any, answer1_id: Any, answer2_id: Any, judge_model: Any) -> tuple:
    """What identifies a review for resuming: the question, both answers and the judge."""
    return (json.dumps(question_id), str(answer1_id), str(answer2_id), str(judge_model))


def load_reviews(path: Path) -> list[dict]:
    """Existing reviews (JSONL), oldest first; a final line cut by a crash is dropped from the file.

    Args:
        path: --output; a missing file means no reviews yet.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    reviews = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if i == len(lines) - 1:   # no newline after it: the write was interrupted
                logger.warning("%s:%d: dropping an incomplete last line (an interrupted write)", path, i + 1)
                with path.open("r+b") as fh:
                    fh.truncate(len(data) - len(raw))
                break
            raise JudgeInputError(f"{path}:{i + 1}: not a JSON review line ({exc}); fix or delete the file") from None
        if not isinstance(rec, dict) or "question_id" not in rec:
            raise JudgeInputError(f"{path}:{i + 1}: not a review record (expected an object with 'question_id')")
        reviews.append(rec)
    else:
        if data and not data.endswith(b"\n"):   # a complete last line without its newline
            with path.open("ab") as fh:
                fh.write(b"\n")
    return reviews


class ReviewWriter:
    """Appends one JSON line per completed review, flushed and fsynced; safe to call from threads."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()
