"""`videoneva judge`: an LLM judge scores two models' answers per question (NeMo's mixtral_eval.py)."""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from videoneva.eval.judge_client import (DEFAULT_API_BASE, DEFAULT_JUDGE_MODEL, ChatClient, ChatSettings,
                                         JudgeAPIError, JudgeRequestFailed)
from videoneva.eval.judge_io import (DEFAULT_RULE_FILE, MEDIA_TYPES, SYSTEM_PROMPT, Answer, JudgeInputError,
                                     Question, ReviewWriter, Rule, answer_file_paths, chunk, load_reviews,
                                     load_rules, read_answers, read_contexts, read_questions, review_content,
                                     review_key, write_answers)
from videoneva.eval.judge_scores import UNPARSEABLE, format_summary, parse_scores, summarize

__all__ = ["JudgeInputError", "JudgeAPIError", "main", "build_parser"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReviewJob:
    """One question with both answers: what the judge is asked to compare."""

    index: int   # 1-based position in this chunk: the review's "id", as NeMo numbers them
    question: Question
    answer1: Answer
    answer2: Answer
    content: str   # the user message

    def record(self, model_names: list[str], judge_model: str) -> dict:
        """The review record without the reply: NeMo's fields first, then ours."""
        return {"id": self.index, "question_id": self.question.question_id,
                "answer1_id": self.answer1.answer_id, "answer2_id": self.answer2.answer_id,
                "category": self.question.category, "model1": model_names[0], "model2": model_names[1],
                "judge_model": judge_model}

    def key(self, judge_model: str) -> tuple:
        return review_key(self.question.question_id, self.answer1.answer_id, self.answer2.answer_id, judge_model)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks; shows a default only where there is one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


DESCRIPTION = """\
Compare two models' answers with an LLM judge, as NeMo's mixtral_eval.py and LLaVA's GPT review do.

Each question, its context and both answers go to an OpenAI-compatible chat-completions endpoint
(by default Mixtral on the NVIDIA API catalog), with the instructions of the question's category
from the rule file. The judge's first reply line holds the two scores (1-10).

Reviews are appended to --output as JSON lines as they complete. Rerunning the same command reuses
them and requests only the missing ones and those whose reply had no score pair.

Prints `all <score1> <score2>`, then one such line per category: mean scores x10 of model 1 and
model 2 over the parsed reviews, followed by counts of unparseable and missing reviews, if any.
Exit status: 0 when every review is in --output, 1 when some requests failed, 2 on bad input."""

EPILOG = """\
example:
  API_TOKEN=nvapi-... videoneva judge --model-name-list gpt bard --media-type image \\
      --question-file llava-bench-in-the-wild/questions.jsonl \\
      --responses-list llava-bench-in-the-wild/answers_gpt4.jsonl llava-bench-in-the-wild/bard_0718.jsonl \\
      --answers-dir ./answers --context-file llava-bench-in-the-wild/context.jsonl --output ./reviews.jsonl"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="videoneva judge", formatter_class=_HelpFormatter, description=DESCRIPTION,
                                epilog=EPILOG)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--model-name-list", nargs=2, required=True, metavar=("MODEL1", "MODEL2"),
                    help="names of the two models, in the order of --responses-list")
    io.add_argument("--media-type", choices=MEDIA_TYPES, default="image",
                    help="the question and context field that names the media (joins questions to context)")
    io.add_argument("--question-file", required=True,
                    help='questions, one JSON per line: {"question_id", "text", "category", "image"|"video"}')
    io.add_argument("--responses-list", nargs=2, required=True, metavar=("RESPONSES1", "RESPONSES2"),
                    help='the two models\' answers, one JSON per line: {"question_id", "text", '
                         '"answer_id", ...} (llava-bench answers), {"response_id", "response"}, or '
                         '`videoneva infer` output ({"question_id", "pred_answer", ...}); joined by id')
    io.add_argument("--answers-dir", default="answers",
                    help="where the normalised answers are saved (<responses-name>_answer.jsonl)")
    io.add_argument("--context-file", required=True,
                    help='captions, one JSON per line: {"image"|"video": name, "caption": str or [str]}')
    io.add_argument("--rule-file", default=None,
                    help='judge instructions per category: {"llava_bench_<category>": {"role", "prompt"}} '
                         "(default: the packaged rule.json, with llava_bench_conv, _detail and _complex)")
    io.add_argument("--output", required=True,
                    help="reviews, JSON lines {id, question_id, answer1_id, answer2_id, category, content, "
                         "tuple, ...}; existing reviews are reused (resume), never overwritten")
    io.add_argument("--num-chunks", type=int, default=1, help="split the questions into this many chunks")
    io.add_argument("--chunk-idx", type=int, default=0, help="which chunk (0-based) this run reviews")
    api = p.add_argument_group("judge endpoint")
    api.add_argument("--api-base", default=DEFAULT_API_BASE,
                     help="OpenAI-compatible base URL; requests go to <api-base>/chat/completions")
    api.add_argument("--judge-model", default=DEFAULT_JUDGE_MODEL, help="model name sent to the endpoint")
    api.add_argument("--api-key-env", default="API_TOKEN",
                     help="NAME of the environment variable holding the API key (the key itself is never "
                          "printed); if unset, no Authorization header is sent (fine for local servers)")
    api.add_argument("--max-tokens", type=int, default=1024, help="maximum tokens in each judge reply")
    api.add_argument("--temperature", type=float, default=0.2, help="judge sampling temperature")
    api.add_argument("--top-p", type=float, default=0.7, help="judge nucleus sampling threshold")
    api.add_argument("--seed", type=int, default=42, help="sampling seed sent with each first request")
    api.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    api.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    api.add_argument("--max-retries", type=int, default=5,
                     help="retries per request on HTTP 429/5xx and network errors, with exponential backoff")
    api.add_argument("--retry-backoff", type=float, default=1.0,
                     help="first backoff delay in seconds (doubled per retry; Retry-After is honoured)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.num_chunks < 1 or not 0 <= args.chunk_idx < args.num_chunks:
        raise JudgeInputError(f"--chunk-idx must be in [0, --num-chunks), got {args.chunk_idx} of {args.num_chunks}")
    if args.concurrency < 1:
        raise JudgeInputError(f"--concurrency must be >= 1, got {args.concurrency}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.api_key_env):
        # Do not echo the value: a user may have passed the key itself here.
        raise JudgeInputError("--api-key-env takes the NAME of an environment variable (e.g. API_TOKEN), "
                              "not the key itself")


def build_jobs(args: argparse.Namespace) -> list[ReviewJob]:
    """Read and check every input, save the normalised answers, and pair them per question.

    Everything is checked before the first request, so a bad file costs no API calls.
    """
    rules = load_rules(args.rule_file or DEFAULT_RULE_FILE)
    questions = read_questions(args.question_file, args.media_type)
    wanted = chunk(questions, args.num_chunks, args.chunk_idx)
    contexts = read_contexts(args.context_file, args.media_type)
    for q in wanted:
        where = f"{Path(args.question_file).expanduser()}:{q.line_no}"
        if q.category not in rules:
            raise JudgeInputError(f"{where}: category {q.category!r} is not in the rule file "
                                  f"{args.rule_file or DEFAULT_RULE_FILE} (it has {sorted(rules)})")
        if q.media not in contexts:
            raise JudgeInputError(f"{where}: {args.media_type} {q.media!r} has no line in the context file "
                                  f"{args.context_file}")
    answer_sets = [read_answers(f, name, questions, wanted, args.question_file)
                   for f, name in zip(args.responses_list, args.model_name_list)]
    paths = answer_file_paths(args.answers_dir, args.responses_list, args.model_name_list,
                              args.num_chunks, args.chunk_idx)
    for path, answers in zip(paths, answer_sets):
        write_answers(path, answers)
        logger.info("saved %d answers to %s", len(answers), path)
    jobs = []
    for i, (q, a1, a2) in enumerate(zip(wanted, *answer_sets), 1):
        rule: Rule = rules[q.category]
        jobs.append(ReviewJob(i, q, a1, a2, review_content(contexts[q.media], q.text, a1.text, a2.text, rule)))
    return jobs


def _is_parsed(rec: dict) -> bool:
    return rec.get("parsed", rec.get("tuple") != UNPARSEABLE) is not False and isinstance(rec.get("tuple"), list)


def review_one(job: ReviewJob, client: ChatClient, writer: ReviewWriter, model_names: list[str]) -> dict:
    """Ask the judge once; on an unparseable reply ask once more (without the seed), then record.

    Args:
        job: the question and answers.
        client: the chat client.
        writer: where the record goes as soon as it is complete.
        model_names: the two model names, stored in the record.
    """
    label = f"question_id {job.question.question_id!r}"
    reply = client.complete(SYSTEM_PROMPT, job.content, label=label)
    scores, attempts = parse_scores(reply), 1
    if scores is None:
        logger.warning("%s: no score pair on the judge's first line; asking once more", label)
        reply = client.complete(SYSTEM_PROMPT, job.content, use_seed=False, label=label)
        scores, attempts = parse_scores(reply), 2
    rec = job.record(model_names, client.settings.model)
    rec.update(content=reply, tuple=list(scores) if scores else list(UNPARSEABLE), parsed=scores is not None,
               attempts=attempts)
    writer.write(rec)
    return rec


def run_reviews(jobs: list[ReviewJob], client: ChatClient, writer: ReviewWriter, model_names: list[str],
                concurrency: int) -> tuple[list[dict], list[str]]:
    """Request the reviews with at most `concurrency` in flight; (records, errors of failed requests).

    A request that fails after its retries is left out (the next run asks again); a JudgeAPIError
    (bad key, model, URL) stops the run, since every other request would fail the same way.
    """
    records, errors = [], []
    stop = threading.Event()   # set by the first worker that hits a JudgeAPIError

    def task(job: ReviewJob) -> Optional[dict]:
        if stop.is_set():
            return None
        try:
            return review_one(job, client, writer, model_names)
        except JudgeAPIError:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="judge") as pool, \
            tqdm(total=len(jobs), desc="judge", unit="review", file=sys.stderr) as bar:
        pending = {pool.submit(task, job) for job in jobs}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    exc = fut.exception()
                    if isinstance(exc, JudgeRequestFailed):
                        errors.append(str(exc))
                    elif exc is not None:
                        raise exc
                    elif fut.result() is not None:
                        records.append(fut.result())
                    bar.update(1)
        except BaseException:
            for fut in pending:   # stop queued requests; in-flight ones finish and are written
                fut.cancel()
            raise
    return records, errors


def _latest(reviews: list[dict]) -> dict[tuple, dict]:
    """Review key -> the review to use: the last parsed one, else the last one."""
    out: dict[tuple, dict] = {}
    for rec in reviews:
        key = review_key(rec.get("question_id"), rec.get("answer1_id"), rec.get("answer2_id"), rec.get("judge_model"))
        if key not in out or _is_parsed(rec) or not _is_parsed(out[key]):
            out[key] = rec
    return out


def _api_key(args: argparse.Namespace) -> Optional[str]:
    key = os.environ.get(args.api_key_env) or None
    if key is None and args.api_base.rstrip("/") == DEFAULT_API_BASE:
        raise JudgeInputError(f"the NVIDIA API catalog needs a key: set the environment variable "
                              f"{args.api_key_env} (or name another one with --api-key-env)")
    return key


def main(argv: list[str]) -> int:
    """Run the judge; 0 when every review is in the output, 1 when some requests failed."""
    args = build_parser().parse_args(argv)
    _check_args(args)
    settings = ChatSettings(api_base=args.api_base, model=args.judge_model, temperature=args.temperature,
                            top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed, timeout_s=args.timeout,
                            max_retries=args.max_retries, retry_backoff_s=args.retry_backoff)
    jobs = build_jobs(args)
    out_path = Path(args.output).expanduser()
    # Resume keyed by question and both answer ids (and the judge model), not by line position as
    # NeMo does; an unparseable review counts as missing. NeMo's own files carry no judge_model,
    # so they are not reused.
    existing = _latest(load_reviews(out_path))
    todo = [j for j in jobs if not (j.key(settings.model) in existing and _is_parsed(existing[j.key(settings.model)]))]
    logger.info("%d of %d reviews already in %s; requesting %d from %s (%s)", len(jobs) - len(todo), len(jobs),
                out_path, len(todo), settings.url, settings.model)
    errors: list[str] = []
    if todo:
        logging.getLogger("httpx").setLevel(logging.WARNING)   # one INFO line per request is noise
        client = ChatClient(settings, _api_key(args))
        writer = ReviewWriter(out_path)
        try:
            with logging_redirect_tqdm():
                records, errors = run_reviews(todo, client, writer, args.model_name_list, args.concurrency)
        finally:
            writer.close()
            client.close()
        for rec in records:
            existing[review_key(rec["question_id"], rec["answer1_id"], rec["answer2_id"], rec["judge_model"])] = rec
    final = [existing[j.key(settings.model)] for j in jobs if j.key(settings.model) in existing]
    print(format_summary(summarize(final, missing=len(jobs) - len(final),
                                   categories={j.question.category for j in jobs})))
    if errors:
        print(f"videoneva judge: {len(errors)} request(s) failed after retries, e.g. {errors[0]}; "
              f"rerun the same command to request only those", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
