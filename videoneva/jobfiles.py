"""Prompt files in and result files out, with the seed's formats and `resume` semantics.

Shared by in-process inference and the gRPC client: one output line per input line, written and
flushed as each completes; a rerun with resume=true keeps the answered question_ids and retries
the rest (failed lines included).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from videoneva.errors import ConfigError
from videoneva.schema import SPLICE_CHOICES

TEXT_KEYS = ("text", "prompt", "question")   # NeMo accepts any of these for the question
MEDIA_KEYS = ("video", "image")


@dataclass
class PromptLine:
    """One input line: either a request (text, media) or the reason it cannot be one."""

    line_no: int                       # 1-based line number in the prompt file
    question_id: Any
    record: dict = field(default_factory=dict)  # the input fields, passed through to the output
    text: Optional[str] = None
    media_type: Optional[str] = None
    media_path: Optional[str] = None
    num_frames: Optional[int] = None            # the line's own frame sampling (null: the model's)
    splice_single_frame: Optional[str] = None
    error: Optional[str] = None


def parse_prompt_line(line_no: int, raw: str, default_media_type: str) -> PromptLine:
    """Parse one jsonl line; problems become `error` (the run goes on) rather than exceptions."""
    try:
        rec = json.loads(raw)
    except json.JSONDecodeError as exc:
        return PromptLine(line_no, None, error=f"line {line_no}: not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(rec, dict):
        return PromptLine(line_no, None, error=f"line {line_no}: expected a JSON object, got {type(rec).__name__}")
    return parse_prompt_record(line_no, rec, default_media_type)


def parse_prompt_record(line_no: int, rec: dict, default_media_type: str) -> PromptLine:
    """Validate one prompt record. question_id defaults to the 0-based line index, as NeMo counts."""
    qid = rec.get("question_id", line_no - 1)
    pl = PromptLine(line_no, qid, record=rec)
    text = next((rec[k] for k in TEXT_KEYS if k in rec), None)
    if not isinstance(text, str) or not text.strip():
        pl.error = f"line {line_no}: missing or empty question text (one of {list(TEXT_KEYS)})"
        return pl
    pl.text = text
    present = [k for k in MEDIA_KEYS if rec.get(k) is not None]
    if len(present) > 1:
        pl.error = f"line {line_no}: has both 'video' and 'image'; give one media item per line"
        return pl
    if present:
        key = present[0]
        if not isinstance(rec[key], str) or not rec[key]:
            pl.error = f"line {line_no}: {key!r} must be a relative path string, got {rec[key]!r}"
            return pl
        pl.media_type, pl.media_path = key, rec[key]
        frames, splice = rec.get("num_frames"), rec.get("splice_single_frame")
        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
            pl.error = f"line {line_no}: 'num_frames' must be a positive whole number, got {frames!r}"
            return pl
        if splice is not None and splice not in SPLICE_CHOICES:
            pl.error = f"line {line_no}: 'splice_single_frame' must be one of {list(SPLICE_CHOICES)}, got {splice!r}"
            return pl
        pl.num_frames, pl.splice_single_frame = frames, splice
    elif default_media_type in MEDIA_KEYS and "media" not in rec:
        pl.error = (f"line {line_no}: no {default_media_type!r} key (inference.media_type={default_media_type}); "
                    f"give the media path, e.g. {{\"{default_media_type}\": \"clip.mp4\", \"text\": …}}")
    return pl


def read_prompt_file(path: str | Path, default_media_type: str) -> list[PromptLine]:
    """All lines of a .jsonl prompt file (or a .json list), in order; blank lines skipped."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompt_file not found: {p}")
    text = p.read_text(encoding="utf-8", errors="replace")
    if p.suffix == ".json" and text.lstrip().startswith("["):
        try:
            recs = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"prompt_file {p}: not valid JSON ({exc})") from None
        return [parse_prompt_record(i + 1, r, default_media_type) if isinstance(r, dict) else
                PromptLine(i + 1, None, error=f"item {i + 1}: expected an object")
                for i, r in enumerate(recs)]
    return [parse_prompt_line(i + 1, raw, default_media_type)
            for i, raw in enumerate(text.splitlines()) if raw.strip()]


class ResultWriter:
    """Append one JSON line per finished prompt line, flushed and fsynced as it completes.

    resume=True keeps earlier successful lines (their question_ids are skipped) and drops earlier
    error lines so they are retried. An existing non-empty file without resume or overwrite is
    refused, so no earlier results are lost by accident.
    """

    def __init__(self, path: str | Path, resume: bool = False, overwrite: bool = False):
        self.path = Path(path)
        self.done: set[str] = set()
        kept: list[str] = []
        if self.path.exists() and self.path.stat().st_size > 0:
            if resume:
                for raw in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                    try:
                        rec = json.loads(raw)
                    except json.JSONDecodeError:
                        continue  # a line cut by a crash: that question is redone
                    if isinstance(rec, dict) and "question_id" in rec and not rec.get("error"):
                        self.done.add(self.key(rec["question_id"]))
                        kept.append(raw)
            elif not overwrite:
                raise ConfigError(
                    f"output_file {self.path} already exists; pass resume=true to continue it or "
                    "overwrite=true to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)
        self._fh = open(self.path, "a", encoding="utf-8")

    @staticmethod
    def key(question_id: Any) -> str:
        return json.dumps(question_id)

    def is_done(self, question_id: Any) -> bool:
        return self.key(question_id) in self.done

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if not record.get("error"):
            self.done.add(self.key(record.get("question_id")))

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
