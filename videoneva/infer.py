"""`videoneva infer key=value…`: the seed's neva_evaluation.py job, in-process (or against a server)."""
from __future__ import annotations

import logging
import sys
import uuid
from typing import Any

from tqdm import tqdm

from videoneva import prompts
from videoneva.config import InferConfig, config_help, load_config
from videoneva.errors import ConfigError, VideoNevaError
from videoneva.generation import SamplingSettings
from videoneva.jobfiles import PromptLine, ResultWriter, read_prompt_file

log = logging.getLogger(__name__)

HELP = """videoneva infer: answer every line of a prompt file with a Video NeVA model.

  videoneva infer neva_model_file=CKPT prompt_file=Q.jsonl output_file=A.jsonl \\
      inference.media_base_path=VIDEOS inference.media_type=video [key=value …]

prompt_file lines: {"video"|"image": path under media_base_path, "text": …, "category": …,
"question_id": …}. One output line per input line, written as each completes, with the input
fields plus prompt, full_text, raw_response, pred_answer (the clean response), model_id,
answer_id, metadata, and `error` when that line failed. resume=true skips answered question_ids.
Exit status: 0 if every line succeeded, 1 if any line failed (a summary names them), 2 on a
configuration or checkpoint error. `config=FILE.yaml` loads defaults from a YAML file."""


def output_record(line: PromptLine, model_id: str, answer: Any = None, error: str | None = None) -> dict:
    """One output line: the input fields + the seed's output fields (NeMo's names)."""
    rec = dict(line.record)
    rec["question_id"] = line.question_id
    rec["line"] = line.line_no
    rec["model_id"] = model_id
    rec["answer_id"] = uuid.uuid4().hex
    if answer is not None:
        rec.update(prompt=answer.prompt, full_text=answer.prompt + answer.raw_response,
                   raw_response=answer.raw_response, pred_answer=answer.clean_response,
                   metadata={"finish_reason": answer.finish_reason, **answer.media, "timings": answer.timings})
        if answer.logprobs is not None:
            rec["logprobs"], rec["tokens"] = answer.logprobs, answer.tokens
    if error is not None:
        rec["error"] = error
    return rec


def run_lines(lines: list[PromptLine], writer: ResultWriter, answer_fn, model_id: str, print_answers: bool) -> list[tuple]:
    """Answer each pending line with answer_fn(line) -> Answer; returns [(line_no, qid, error)] of failures."""
    failures = []
    pending = [ln for ln in lines if ln.error is not None or not writer.is_done(ln.question_id)]
    skipped = len(lines) - len(pending)
    if skipped:
        log.info("resume: %d of %d lines already answered in %s", skipped, len(lines), writer.path)
    for line in tqdm(pending, desc="infer", unit="q", file=sys.stderr, dynamic_ncols=True):
        if line.error is not None:
            writer.write(output_record(line, model_id, error=line.error))
            failures.append((line.line_no, line.question_id, line.error))
            continue
        try:
            ans = answer_fn(line)
        except VideoNevaError as exc:
            msg = f"line {line.line_no}: {exc}"
            writer.write(output_record(line, model_id, error=msg))
            failures.append((line.line_no, line.question_id, msg))
            continue
        writer.write(output_record(line, model_id, answer=ans))
        if print_answers:
            tqdm.write(prompts.format_seed_output(ans.prompt, ans.clean_response), file=sys.stdout)
    return failures


def report_failures(failures: list[tuple], total: int, output_file: str) -> int:
    if not failures:
        print(f"infer: {total} lines answered, results in {output_file}", file=sys.stderr)
        return 0
    print(f"infer: {len(failures)} of {total} lines failed (results of the others are in {output_file}; "
          "fix the inputs and rerun with resume=true):", file=sys.stderr)
    for line_no, qid, err in failures:
        print(f"  question_id={qid}: {err}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(HELP + "\n\n" + config_help(InferConfig, "Configuration"))
        return 0
    cfg: InferConfig = load_config(InferConfig, argv)
    if not cfg.prompt_file or not cfg.output_file:
        raise ConfigError("prompt_file=PATH and output_file=PATH are required (see --help)")
    lines = read_prompt_file(cfg.prompt_file, cfg.inference.media_type)
    writer = ResultWriter(cfg.output_file, resume=cfg.resume, overwrite=cfg.overwrite)

    from videoneva.runtime.loader import build_pipeline  # heavy imports after the cheap checks

    pipe = build_pipeline(cfg)
    from videoneva.runtime.pipeline import Request

    end_strings = prompts.stop_strings(pipe.settings.template)

    def answer(line: PromptLine):
        sampling = SamplingSettings.from_inference(cfg.inference, end_strings)
        sampling.seed = cfg.inference.seed + line.line_no - 1
        return pipe.answer(Request(line.text, line.media_type, line.media_path), sampling)

    with writer:
        failures = run_lines(lines, writer, answer, pipe.settings.model_id, cfg.print_answers)
    return report_failures(failures, len(lines), cfg.output_file)
