"""`videoneva convert`: write the native checkpoint format from a transformers Llava dir or a .nemo."""
from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from videoneva.checkpoint.native import load_checkpoint, save_checkpoint
from videoneva.config import _help, config_help, load_config
from videoneva.errors import ConfigError


@dataclass
class ConvertConfig:
    neva_model_file: Optional[str] = _help("source: transformers Llava dir, native dir or NeMo .nemo", default=None)
    base_model_file: Optional[str] = _help("NeMo GPT .nemo with the LLM (projector-only neva_model_file)", default=None)
    vision_tower: Optional[str] = _help("local HF CLIP dir when the .nemo does not carry the vision tower", default=None)
    output: Optional[str] = _help("output directory (native format)", default=None)
    overwrite: bool = _help("replace an existing output directory", default=False)
    conv_template: Optional[str] = _help("override the conversation template", default=None)
    num_frames: Optional[int] = _help("override frames per video", default=None)
    model_id: Optional[str] = _help("model id recorded in videoneva.json", default=None)
    nemo_tokenizer_rules: str = _help("2.1 | 2.2: NeMo release rules for a legacy SentencePiece tokenizer's added "
                                      "tokens (see docs/nemo-checkpoints.md)", default="2.1")


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(config_help(ConvertConfig, "videoneva convert neva_model_file=SRC output=DIR [key=value …]"))
        return 0
    cfg: ConvertConfig = load_config(ConvertConfig, argv)
    if not cfg.neva_model_file or not cfg.output:
        raise ConfigError("neva_model_file=SRC and output=DIR are required")
    out = Path(cfg.output)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"output {out} exists and is not empty; pass overwrite=true to replace it")
    if cfg.nemo_tokenizer_rules not in ("2.1", "2.2"):
        raise ConfigError(f"nemo_tokenizer_rules must be 2.1 or 2.2, got {cfg.nemo_tokenizer_rules!r}")
    ckpt = load_checkpoint(cfg.neva_model_file, "32", cfg.base_model_file, cfg.vision_tower, cfg.nemo_tokenizer_rules)
    s = ckpt.settings
    updates = {k: v for k, v in (("conv_template", cfg.conv_template), ("num_frames", cfg.num_frames),
                                   ("model_id", cfg.model_id)) if v is not None}
    s = dataclasses.replace(s, **updates)
    if not s.source:
        s.source = {"kind": ckpt.kind, "path": str(cfg.neva_model_file)}
    # Write next to the target and rename at the end: a failed convert leaves no half directory.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_checkpoint(ckpt.model, ckpt.tokenizer, s, tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"convert: wrote {out} (from {ckpt.kind} {cfg.neva_model_file}; template {s.conv_template}, "
          f"{s.num_frames} frames)", file=sys.stderr)
    return 0
