"""`videoneva <command> …`: one console script, every subcommand in one table."""
from __future__ import annotations

import importlib
import logging
import sys

from videoneva.errors import VideoNevaError

# name -> ("module:function", one-line help). Each function takes argv (list[str]) and returns
# an exit code. Modules are imported lazily so `videoneva --help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "infer": ("videoneva.infer:main", "run the seed's inference job (prompt_file -> output_file), in-process or against a server"),
    "serve": ("videoneva.serving.serve:main", "serve an engine directory with Triton Inference Server over gRPC"),
    "train": ("videoneva.train.loop:main", "finetune or train from scratch (pretrain | finetune stages, LoRA)"),
    "build": ("engine_build.build:main", "checkpoint -> engine directory (ONNX/TensorRT vision, AWQ TensorRT-LLM)"),
    "convert": ("videoneva.checkpoint.convert:main", "convert a HF LLaVA dir or .nemo archive to the native format"),
    "bench": ("videoneva.bench.run:main", "benchmark a live server: TTFT, inter-token and e2e latency, throughput per concurrency"),
    "judge": ("videoneva.eval.judge:main", "LLM-as-a-judge comparison of two models' answers (mixtral_eval)"),
    "demo-data": ("videoneva.demo.synth:main", "write a synthetic video QA data set"),
    "eval-demo": ("videoneva.eval.exact_match:main", "exact-match accuracy per question type"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: videoneva <command> [args…]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`videoneva <command> --help` describes each command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"videoneva: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(rest) or 0)
    except VideoNevaError as exc:  # user error: message, no traceback
        print(f"videoneva {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"videoneva {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
