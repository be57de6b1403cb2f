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

# One example per command that runs as written from the repository's root, in this order (each
# uses what the ones before it wrote; serve runs until Ctrl-C and bench asks it; judge needs
# NVIDIA_API_KEY for the NVIDIA API catalog, or --api-base of another OpenAI-compatible judge).
DEMO_CKPT = "videoneva/demo/assets/videoneva-demo"
EX = "/tmp/videoneva-example"
EXAMPLES: dict[str, str] = {
    "demo-data": f"videoneva demo-data out={EX}/data n=3",
    "build": f"videoneva build checkpoint={DEMO_CKPT} output={EX}/engine",
    "infer": f"videoneva infer engine_dir={EX}/engine prompt_file={EX}/data/heldout_prompts.jsonl "
             f"output_file={EX}/answers.jsonl inference.media_base_path={EX}/data inference.insert_media_token=left",
    "eval-demo": f"videoneva eval-demo output_file={EX}/answers.jsonl refs={EX}/data/heldout_refs.jsonl",
    "convert": f"videoneva convert neva_model_file={DEMO_CKPT} output={EX}/converted",
    "train": f"videoneva train init={DEMO_CKPT} data.data_path={EX}/data/train.json data.video_folder={EX}/data "
             f"output_dir={EX}/run train.max_steps=2",
    "judge": f"videoneva judge --model-name-list a b --media-type video --question-file {EX}/data/heldout_prompts.jsonl "
             f"--responses-list {EX}/answers.jsonl {EX}/answers.jsonl --context-file {EX}/data/heldout_context.jsonl "
             f"--rule-file {EX}/data/judge_rules.json --answers-dir {EX}/answers --output {EX}/reviews.jsonl "
             "--api-key-env NVIDIA_API_KEY",
    "serve": f"videoneva serve engine_dir={EX}/engine media_root={EX}/data",
    "bench": f"videoneva bench server_url=127.0.0.1:8001 prompt_file={EX}/data/heldout_prompts.jsonl concurrency=1 "
             f"num_requests=4 output_dir={EX}/bench",
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: videoneva <command> [args…]", "",
             "example (from the repository's root: build the shipped demo model, then serve it):",
             f"  {EXAMPLES['build']}", f"  {EXAMPLES['serve'].replace(f'media_root={EX}/data', '')}".rstrip(), "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`videoneva <command> --help` describes each command's arguments and starts with an example."]
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
    if any(a in ("-h", "--help") for a in rest):
        print(f"example (from the repository's root):\n  {EXAMPLES[name]}\n")
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
