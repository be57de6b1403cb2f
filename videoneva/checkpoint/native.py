"""The native checkpoint: a transformers Llava directory plus `videoneva.json` (media + template).

Loading dispatches on what the path is: a native dir, any transformers
LlavaForConditionalGeneration dir (settings defaulted), or a NeMo `.nemo` archive (imported).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration, PreTrainedTokenizerBase

from videoneva.checkpoint.settings import FORMAT_VERSION, SETTINGS_FILE, CheckpointSettings  # noqa: F401
from videoneva.errors import CheckpointError
from videoneva.media.settings import CLIP_MEAN, CLIP_STD  # noqa: F401

log = logging.getLogger(__name__)

SUPPORTED_TEXT_MODELS = ("llama", "mistral", "nemotron")  # nemotron: NeMo nvgpt (Video NeVA stock)
SUPPORTED_VISION_MODELS = ("clip_vision_model",)
DTYPES = {"32": torch.float32, "16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class LoadedCheckpoint:
    model: LlavaForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    settings: CheckpointSettings
    path: str
    kind: str  # "native" | "hf_llava" | "nemo"

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def patch_size(self) -> int:
        return int(self.model.config.vision_config.patch_size)


def check_llava_config(config: Any, where: str) -> None:
    """Refuse architectures we cannot serve, naming what is supported."""
    if getattr(config, "model_type", None) != "llava":
        raise CheckpointError(
            f"{where}: unknown architecture {getattr(config, 'model_type', None)!r}; expected a "
            "transformers 'llava' (LlavaForConditionalGeneration) checkpoint, a native videoneva "
            "checkpoint, or a NeMo .nemo archive")
    text, vision = config.text_config.model_type, config.vision_config.model_type
    if text not in SUPPORTED_TEXT_MODELS:
        raise CheckpointError(f"{where}: LLM type {text!r} is not supported; supported: {list(SUPPORTED_TEXT_MODELS)}")
    if vision not in SUPPORTED_VISION_MODELS:
        raise CheckpointError(f"{where}: vision tower {vision!r} is not supported; supported: {list(SUPPORTED_VISION_MODELS)}")
    if not isinstance(config.vision_feature_layer, int):
        raise CheckpointError(f"{where}: vision_feature_layer must be one layer, got {config.vision_feature_layer!r}")


def check_checkpoint_dir(path: Path) -> list[str]:
    """List what a transformers Llava directory lacks (empty list: complete)."""
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        missing.append("model weights (*.safetensors)")
    if not any((path / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        missing.append("tokenizer (tokenizer.json or tokenizer.model)")
    return missing


def save_checkpoint(model: LlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase,
                    settings: CheckpointSettings, out_dir: str | Path) -> Path:
    """Write the native format: transformers Llava dir (safetensors + tokenizer) + videoneva.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.architectures = ["LlavaForConditionalGeneration"]
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / SETTINGS_FILE).write_text(json.dumps(dataclasses.asdict(settings), indent=2) + "\n")
    return out


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """AutoTokenizer, or videoneva's NeMo SentencePiece tokenizer where tokenizer_config.json names it.

    Args:
        path: a directory written by a tokenizer's save_pretrained.
    """
    cfg = Path(path) / "tokenizer_config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("tokenizer_class") == "NemoSentencePieceTokenizer":
        from videoneva.checkpoint.nemo_tokenizer import NemoSentencePieceTokenizer

        return NemoSentencePieceTokenizer.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def _load_tokenizer(path: Path, config: LlavaConfig) -> PreTrainedTokenizerBase:
    try:
        tok = load_tokenizer(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot load the tokenizer: {exc}") from None
    image_id = config.image_token_id
    if image_id >= config.text_config.vocab_size:
        raise CheckpointError(
            f"{path}: image_token_id {image_id} is outside the LLM vocabulary ({config.text_config.vocab_size})")
    return tok


def _load_hf_dir(path: Path, dtype: torch.dtype) -> tuple[LlavaForConditionalGeneration, PreTrainedTokenizerBase]:
    missing = check_checkpoint_dir(path)
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    try:
        config = LlavaConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}/config.json: {exc}") from None
    check_llava_config(config, str(path))
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype)
    model.eval()
    return model, _load_tokenizer(path, config)


def load_checkpoint(path: str | Path, precision: str = "32", base_model_file: str | Path | None = None,
                    vision_tower: str | Path | None = None, tokenizer_rules: str = "2.1") -> LoadedCheckpoint:
    """Load any supported checkpoint into a transformers Llava model.

    Args:
        path: native dir, transformers Llava dir, or `.nemo` archive.
        precision: "32" | "16" | "bf16".
        base_model_file: NeMo GPT `.nemo` with the LLM when `path` holds only the projector.
        vision_tower: local HF CLIP dir for `.nemo` archives that do not carry the tower.
        tokenizer_rules: "2.1" | "2.2", NeMo's SentencePiece special-token rules for a `.nemo`
            (videoneva/checkpoint/nemo_tokenizer.py).
    """
    p = Path(path)
    dtype = DTYPES[precision]
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_file() and (p.suffix == ".nemo" or p.name.endswith((".nemo.tar", ".tar", ".tar.gz"))):
        return _load_nemo(p, dtype, base_model_file, vision_tower, tokenizer_rules)
    if base_model_file is not None:
        raise CheckpointError("base_model_file is only used with a projector-only NeMo .nemo neva_model_file")
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a checkpoint directory or a .nemo archive")
    model, tok = _load_hf_dir(p, dtype)
    settings_path = p / SETTINGS_FILE
    if settings_path.is_file():
        try:
            settings = CheckpointSettings.from_dict(json.loads(settings_path.read_text()))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{settings_path}: not valid JSON ({exc})") from None
        kind = "native"
    else:
        # A plain transformers LLaVA checkpoint: LLaVA-1.5 conventions (vicuna v1 template).
        settings = CheckpointSettings(conv_template="v1", model_id=p.name, source={"kind": "hf_llava", "path": str(p)})
        kind = "hf_llava"
        log.info("%s has no %s: using defaults %s", p, SETTINGS_FILE, settings)
    return LoadedCheckpoint(model, tok, settings, str(p), kind)


def _load_nemo(p: Path, dtype: torch.dtype, base_model_file, vision_tower, tokenizer_rules: str) -> LoadedCheckpoint:
    from videoneva.checkpoint.nemo import import_nemo

    imported = import_nemo(p, base_model_file=base_model_file, vision_tower=vision_tower,
                           tokenizer_rules=tokenizer_rules)
    check_llava_config(imported.config, str(p))
    # Built on CPU, not on the meta device: RoPE's inv_freq is a non-persistent buffer that the
    # state dict does not carry.
    model = LlavaForConditionalGeneration(imported.config)
    model.load_state_dict(imported.state_dict, strict=True)
    model.to(dtype).eval()
    s = imported.settings
    settings = CheckpointSettings(
        conv_template=s.get("conv_template", "nvgpt"), media_type=s.get("media_type", "video"),
        num_frames=int(s.get("num_frames", 8)), splice_single_frame=s.get("splice_single_frame"),
        image_aspect_ratio=s.get("image_aspect_ratio", "square"), model_id=p.stem,
        image_mean=tuple(s.get("image_mean", CLIP_MEAN)), image_std=tuple(s.get("image_std", CLIP_STD)),
        source={"kind": "nemo", "neva_model_file": str(p), "base_model_file": str(base_model_file) if base_model_file else None},
    )
    return LoadedCheckpoint(model, imported.tokenizer, settings, str(p), "nemo")
