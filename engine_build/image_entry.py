"""The GPU image's entry: build the engine directory when it is missing, then serve it.

  videoneva-entry CHECKPOINT ENGINE_DIR [build.KEY=VALUE …] [serve.KEY=VALUE …]

`build.` keys go to `videoneva build` (after the image's defaults: TensorRT vision plan, TensorRT-LLM
engine, bf16), `serve.` keys to `videoneva serve` (after engine_dir= and host=0.0.0.0): the two
commands take different keys, so each key says which one it is for. QUANTIZE=awq|fp8 and
PRECISION=16|bf16|32 in the environment set quantization and precision defaults.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from videoneva.errors import ConfigError

USAGE = "usage: videoneva-entry CHECKPOINT ENGINE_DIR [build.KEY=VALUE …] [serve.KEY=VALUE …]"


def split_keys(args: list[str]) -> tuple[list[str], list[str]]:
    """(build keys, serve keys) with their prefixes removed; ConfigError for a key without one."""
    build, serve = [], []
    for a in args:
        for prefix, into in (("build.", build), ("serve.", serve)):
            if a.startswith(prefix) and "=" in a:
                into.append(a[len(prefix):])
                break
        else:
            raise ConfigError(f"{a!r}: prefix each key with build. or serve. (e.g. build.max_batch_size=4, "
                              f"serve.grpc_port=9001)\n{USAGE}")
    return build, serve


def build_defaults(env: dict) -> list[str]:
    """The image's build settings before the user's build. keys."""
    args = ["vision.backend=tensorrt", "llm.backend=tensorrt_llm", f"trainer.precision={env.get('PRECISION', 'bf16')}"]
    algo = env.get("QUANTIZE", "")
    if algo and algo.lower() not in ("0", "false", "no", "none"):
        args += ["quantization.enable=true", f"quantization.algorithm={algo}"]
    return args


def main(argv: list[str], exec_fn: Callable[[str, list[str]], None] = os.execvp, env: dict | None = None) -> int:
    """Build (when ENGINE_DIR/manifest.json is missing) and hand the process over to `videoneva serve`.

    Args:
        argv: CHECKPOINT ENGINE_DIR and prefixed keys.
        exec_fn: replaces this process with the server (os.execvp).
        env: the environment (os.environ).
    """
    from videoneva.cli import main as cli

    env = os.environ if env is None else env
    if len(argv) < 2 or any(a in ("-h", "--help") for a in argv):
        print(USAGE + "\n\n" + __doc__, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    ckpt, engine = argv[0], Path(argv[1])
    try:
        build_args, serve_args = split_keys(argv[2:])
    except ConfigError as exc:
        print(f"videoneva-entry: {exc}", file=sys.stderr)
        return 2
    if not (engine / "manifest.json").is_file():
        rc = cli(["build", f"checkpoint={ckpt}", f"output={engine}", *build_defaults(env), *build_args])
        if rc:
            return rc
    exec_fn("videoneva", ["videoneva", "serve", f"engine_dir={engine}", "host=0.0.0.0", *serve_args])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
