"""`videoneva infer key=value…`: the seed's neva_evaluation.py job, in-process (or against a server)."""
from __future__ import annotations

import dataclasses
import logging
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm import tqdm

from videoneva import prompts
from videoneva.config import InferConfig, config_help, load_config
from videoneva.errors import ConfigError, VideoNevaError
from videoneva.jobfiles import PromptLine, ResultWriter, read_prompt_file
from videoneva.schema import Answer, Delta, Request, SamplingSettings

log = logging.getLogger(__name__)

HELP = """videoneva infer: answer every line of a prompt file with a Video NeVA model.

  videoneva infer neva_model_file=CKPT prompt_file=Q.jsonl output_file=A.jsonl \\
      inference.media_base_path=VIDEOS inference.media_type=video [key=value …]

prompt_file lines: {"video"|"image": path under media_base_path, "text": …, "category": …,
"question_id": …}. One output line per input line, written as each completes, with the input
fields plus prompt, full_text, raw_response, pred_answer (the clean response), model_id,
answer_id, metadata, and `error` when that line failed. resume=true skips answered question_ids.
Exit status: 0 if every line succeeded, 1 if any line failed (a summary names them), 2 on a
configuration or checkpoint error. `config=FILE.yaml` loads defaults from a YAML file.

Against a server (`videoneva serve`): server_url=HOST:PORT [concurrency=N server_media=bytes|path
request_timeout=S retries=N]; no model is loaded here. The model_id written is the server's model
id. A line may set its own "num_frames" and "splice_single_frame". stream=true (with concurrency=1)
prints each answer as it is generated."""


def output_record(line: PromptLine, model_id: str, answer: Answer | None = None, error: str | None = None) -> dict:
    """One output line: the input fields + the seed's output fields (NeMo's names)."""
    rec = dict(line.record)
    rec["question_id"] = line.question_id
    rec["line"] = line.line_no
    rec["model_id"] = model_id or (answer.model_id if answer is not None else None) or ""
    rec["answer_id"] = uuid.uuid4().hex
    if answer is not None:
        rec.update(prompt=answer.prompt, full_text=answer.prompt + answer.raw_response,
                   raw_response=answer.raw_response, pred_answer=answer.clean_response,
                   metadata={"finish_reason": answer.finish_reason, **answer.media, "usage": answer.usage,
                             "timings": answer.timings})
        if answer.logprobs is not None:
            rec["logprobs"], rec["tokens"] = answer.logprobs, answer.tokens
    if error is not None:
        rec["error"] = error
    return rec


def run_lines(lines: list[PromptLine], writer: ResultWriter, answer_fn, model_id: str, print_answers: bool,
              concurrency: int = 1) -> list[tuple]:
    """Answer each pending line with answer_fn(line) -> Answer; returns [(line_no, qid, error)] of failures.

    With concurrency > 1, lines run on that many threads and are written as they complete. Any
    exception while answering a line (a VideoNevaError for bad input, or anything else, logged
    with its traceback) becomes that line's `error`; the other lines go on.
    """
    failures = []
    pending = [ln for ln in lines if ln.error is not None or not writer.is_done(ln.question_id)]
    skipped = len(lines) - len(pending)
    if skipped:
        log.info("resume: %d of %d lines already answered in %s", skipped, len(lines), writer.path)

    def one(line: PromptLine):
        if line.error is not None:
            return line, None, line.error
        try:
            return line, answer_fn(line), None
        except VideoNevaError as exc:
            return line, None, f"line {line.line_no}: {exc}"
        except Exception as exc:  # a fault while answering this line fails this line only; the run goes on
            log.error("line %d (question_id=%s) failed unexpectedly", line.line_no, line.question_id, exc_info=True)
            return line, None, f"line {line.line_no}: internal error ({type(exc).__name__}: {exc}; traceback in the log)"

    def record(line: PromptLine, ans, err) -> None:
        if err is not None:
            writer.write(output_record(line, model_id, error=err))
            failures.append((line.line_no, line.question_id, err))
            return
        writer.write(output_record(line, model_id, answer=ans))
        if print_answers:
            tqdm.write(prompts.format_seed_output(ans.prompt, ans.clean_response), file=sys.stdout)

    bar = tqdm(total=len(pending), desc="infer", unit="q", file=sys.stderr, dynamic_ncols=True)
    with bar:
        if concurrency <= 1:
            for line in pending:
                record(*one(line))
                bar.update()
        else:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                for fut in as_completed([pool.submit(one, line) for line in pending]):
                    record(*fut.result())
                    bar.update()
    return failures


def line_request(line: PromptLine, media_bytes: bytes | None = None) -> Request:
    """The Request of a prompt line (its media by path, or as bytes read by the caller)."""
    return Request(line.text, line.media_type, None if media_bytes is not None else line.media_path, media_bytes,
                   num_frames=line.num_frames, splice_single_frame=line.splice_single_frame)


def line_sampling(cfg: InferConfig, line: PromptLine) -> SamplingSettings:
    """inference.* as sampling settings, seeded per line (seed + line index, as NeMo's job does)."""
    return dataclasses.replace(SamplingSettings.from_inference(cfg.inference), seed=cfg.inference.seed + line.line_no - 1)


def printer(cfg: InferConfig):
    """on_delta that prints streamed answers (stream=true, concurrency=1), else None."""
    if not (cfg.stream and cfg.concurrency == 1 and cfg.print_answers):
        return None

    def on_delta(d: Delta) -> None:
        sys.stdout.write(d.text)
        sys.stdout.flush()
    return on_delta


def remote_answer_fn(cfg: InferConfig):
    """answer_fn for `server_url=`: each line goes to the server over gRPC (media as bytes or a path)."""
    from videoneva.media.sources import MediaRoot
    from videoneva.serving.client import Client

    client = Client(cfg.server_url, timeout=cfg.request_timeout, retries=cfg.retries)
    root = MediaRoot(cfg.inference.media_base_path) if cfg.server_media == "bytes" else None
    on_delta = printer(cfg)

    def answer(line: PromptLine) -> Answer:
        req = line_request(line, root.read_bytes(line.media_path) if root is not None and line.media_type else None)
        req.insert_media_token = cfg.inference.insert_media_token or "none"  # NeMo: null = the text as given
        inputs = {k: v for k, v in dataclasses.asdict(req).items() if k != "text"}
        result = client.answer(line.text, on_delta=None if on_delta is None else (lambda t: on_delta(Delta(t, []))),
                               request_id=str(line.question_id), **inputs, **dataclasses.asdict(line_sampling(cfg, line)))
        if on_delta is not None:
            sys.stdout.write("\n")
        return result

    return client, answer


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

    if cfg.server_url:
        client, answer = remote_answer_fn(cfg)
        with writer, client:
            failures = run_lines(lines, writer, answer, cfg.model_id, cfg.print_answers, cfg.concurrency)
        return report_failures(failures, len(lines), cfg.output_file)

    from videoneva.runtime.loader import build_pipeline  # heavy imports after the cheap checks

    pipe = build_pipeline(cfg)
    on_delta = printer(cfg)

    def answer(line: PromptLine) -> Answer:
        out = pipe.answer(line_request(line), line_sampling(cfg, line), on_delta)
        if on_delta is not None:
            sys.stdout.write("\n")
        return out

    with writer:
        failures = run_lines(lines, writer, answer, pipe.settings.model_id, cfg.print_answers, cfg.concurrency)
    return report_failures(failures, len(lines), cfg.output_file)
