"""An engine directory (the output of `videoneva build`) read into one typed value, without weights.

    engines/<name>/
      manifest.json       what was built, from which checkpoint, with which settings and tools
      media.json          the checkpoint's media + template settings and the sizes derived at build
      tokenizer/          tokenizer files
      vision/vision.onnx  always; vision/vision.plan with TensorRT
      llm/torch/          the LLM for torch (config.json is read here for the vocabulary and context)
      llm/onnx/           with llm.backend=onnx
      llm/trtllm_ckpt/    the TensorRT-LLM checkpoint; llm/trtllm_engine/ with TensorRT-LLM

Only JSON is read here (no torch, no transformers), so every Triton model can afford it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from videoneva.checkpoint.settings import CheckpointSettings
from videoneva.errors import CheckpointError, ConfigError
from videoneva.media.settings import MediaSettings

log = logging.getLogger(__name__)

ENGINE_FORMAT = 1
REQUIRED = ("manifest.json", "media.json", "tokenizer", "vision/vision.onnx")
VISION_BACKENDS = ("onnx", "tensorrt")
LLM_BACKENDS = ("torch", "onnx", "tensorrt_llm")


@dataclass
class EngineDir:
    """What an engine directory says about itself.

    Attributes:
        path: the directory.
        manifest: manifest.json as written by the build.
        settings: the checkpoint's media and template settings.
        image_size, patch_size: the vision tower's input and patch size.
        image_token_len: prompt positions per frame (after pooling).
        hidden_size: the LLM's width (the prompt table's columns).
        image_token_id: the in-vocabulary id standing in for media rows.
        vocab_size: the fake-id base (media positions get vocab_size + k): media.json's fake_id_base (the
            TensorRT-LLM checkpoint's vocabulary, padded for AWQ), else llm/torch's vocab_size.
        max_context: the LLM's context in positions.
        vision_backend, llm_backend: what the build was asked for.
    """

    path: Path
    manifest: dict
    settings: CheckpointSettings
    image_size: int
    patch_size: int
    image_token_len: int
    hidden_size: int
    image_token_id: int
    vocab_size: int
    max_context: int
    vision_backend: str
    llm_backend: str

    @classmethod
    def read(cls, engine_dir: str | Path) -> "EngineDir":
        """The engine directory's description; CheckpointError lists what is missing or not understood."""
        d = Path(engine_dir)
        if not d.is_dir():
            raise CheckpointError(f"engine directory not found: {d}")
        missing = [r for r in REQUIRED if not (d / r).exists()]
        if not (d / "llm" / "torch" / "config.json").is_file():
            missing.append("llm/torch/config.json")
        if missing:
            raise CheckpointError(f"{d}: incomplete engine directory, missing {', '.join(missing)}; "
                                  "rebuild it with `videoneva build checkpoint=… output=…`")
        manifest = json.loads((d / "manifest.json").read_text())
        if manifest.get("format_version") != ENGINE_FORMAT:
            raise CheckpointError(f"{d}/manifest.json: format_version {manifest.get('format_version')!r} is not "
                                  f"understood (this videoneva reads {ENGINE_FORMAT})")
        built = manifest.get("settings", {})
        vision, llm = built.get("vision", {}).get("backend", "onnx"), built.get("llm", {}).get("backend", "torch")
        if vision not in VISION_BACKENDS or llm not in LLM_BACKENDS:
            raise CheckpointError(f"{d}/manifest.json asks for vision.backend={vision!r} / llm.backend={llm!r}; this "
                                  f"videoneva runs vision {list(VISION_BACKENDS)} and llm {list(LLM_BACKENDS)}")
        if llm == "onnx" and not (d / "llm" / "onnx").is_dir():
            raise CheckpointError(f"{d}: incomplete engine directory, missing llm/onnx (the build asked for "
                                  "llm.backend=onnx); rebuild it with `videoneva build … llm.backend=onnx`")
        media = json.loads((d / "media.json").read_text())
        lc = json.loads((d / "llm" / "torch" / "config.json").read_text())
        return cls(path=d, manifest=manifest, settings=CheckpointSettings.from_dict(media["settings"]),
                   image_size=int(media["image_size"]), patch_size=int(media.get("patch_size", 0)),
                   image_token_len=int(media["image_token_len"]), hidden_size=int(media["hidden_size"]),
                   image_token_id=int(media["image_token_id"]),
                   vocab_size=int(media.get("fake_id_base") or lc["vocab_size"]),
                   max_context=int(lc["max_position_embeddings"]), vision_backend=vision, llm_backend=llm)

    @property
    def quantized(self) -> bool:
        return bool(self.manifest.get("llm", {}).get("quantized"))

    @property
    def max_multimodal_len(self) -> Optional[int]:
        """Prompt-table rows a TensorRT-LLM engine takes per batch (None for the other backends)."""
        value = self.manifest.get("derived", {}).get("max_multimodal_len")
        return int(value) if value else None

    def media_settings(self, data=None, media_type: Optional[str] = None) -> MediaSettings:
        """The engine's media settings with data.* overrides; refuses overrides the build fixed."""
        if data is not None:
            if data.frame_token_pool not in (None, self.settings.frame_token_pool):
                raise ConfigError(f"data.frame_token_pool={data.frame_token_pool}: this engine was built with "
                                  f"{self.settings.frame_token_pool}; rebuild the engine to change it")
            if data.image_token_len not in (None, self.image_token_len):
                raise ConfigError(f"data.image_token_len={data.image_token_len} conflicts with the engine's "
                                  f"{self.image_token_len}")
        return MediaSettings.from_checkpoint(self.settings, self.image_size, data, media_type)

    def backends(self, device: str = "auto") -> tuple[str, str]:
        """(vision backend, llm backend) to run: the build's choice, or the portable pair with device=cpu.

        device=cpu always gives a portable pair (onnx, and the ONNX LLM when it was built, else torch),
        so a GPU-built engine directory still runs on a CPU machine.
        """
        if device != "cpu":
            return self.vision_backend, self.llm_backend
        portable = ("onnx", self.llm_backend if self.llm_backend in ("torch", "onnx") else "torch")
        if portable != (self.vision_backend, self.llm_backend):
            log.info("device=cpu: running the portable %s + %s backends instead of %s + %s", *portable,
                     self.vision_backend, self.llm_backend)
        return portable
