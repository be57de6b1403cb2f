"""Read an engine directory (output of `videoneva build`) and build a Pipeline from it.

The directory describes itself: manifest.json says what was built; media.json holds the media and
template settings; the backends are picked from what is present and what this machine can run.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from videoneva.checkpoint.native import CheckpointSettings, DTYPES
from videoneva.config import InferConfig
from videoneva.errors import CheckpointError, ConfigError
from videoneva.media.settings import MediaSettings
from videoneva.media.sources import MediaRoot
from videoneva.runtime.cache import FeatureCache
from videoneva.runtime.pipeline import Front, Pipeline, PipelineSettings

log = logging.getLogger(__name__)

ENGINE_FORMAT = 1
REQUIRED = ("manifest.json", "media.json", "tokenizer", "vision/vision.onnx")


def read_engine_dir(engine_dir: str | Path) -> tuple[dict, dict]:
    """(manifest, media) of a complete engine directory; CheckpointError lists what is missing."""
    d = Path(engine_dir)
    if not d.is_dir():
        raise CheckpointError(f"engine directory not found: {d}")
    missing = [r for r in REQUIRED if not (d / r).exists()]
    if not (d / "llm" / "torch").is_dir() and not (d / "llm" / "trtllm_ckpt").is_dir():
        missing.append("llm/torch or llm/trtllm_ckpt")
    if missing:
        raise CheckpointError(f"{d}: incomplete engine directory, missing {', '.join(missing)}; "
                              "rebuild it with `videoneva build checkpoint=… output=…`")
    manifest = json.loads((d / "manifest.json").read_text())
    if manifest.get("format_version") != ENGINE_FORMAT:
        raise CheckpointError(f"{d}/manifest.json: format_version {manifest.get('format_version')!r} is not "
                              f"understood (this videoneva reads {ENGINE_FORMAT})")
    if manifest.get("settings", {}).get("llm", {}).get("backend") == "onnx" and not (d / "llm" / "onnx").is_dir():
        raise CheckpointError(f"{d}: incomplete engine directory, missing llm/onnx (the build asked for "
                              "llm.backend=onnx); rebuild it with `videoneva build … llm.backend=onnx`")
    return manifest, json.loads((d / "media.json").read_text())


def fake_id_base(d: Path, media: dict) -> int:
    """First media id: media.json `fake_id_base` (the TensorRT-LLM checkpoint's vocabulary, padded to a
    multiple of 64 for AWQ); directories built without it use llm/torch/config.json's vocab_size."""
    if "fake_id_base" in media:
        return int(media["fake_id_base"])
    return int(json.loads((d / "llm" / "torch" / "config.json").read_text())["vocab_size"])


def load_engine_llm(d: Path, manifest: dict, precision: str, llm_source: Optional[str] = None):
    """The LLM for the torch backend: llm/torch weights, or the TensorRT-LLM checkpoint dequantized.

    llm_source: "torch" | "trtllm_ckpt" | None (the quantized checkpoint when the build quantized,
    so `infer engine_dir=…` measures the AWQ model's accuracy on CPU).
    """
    if llm_source is None:
        llm_source = "trtllm_ckpt" if manifest.get("llm", {}).get("quantized") else "torch"
    dtype = DTYPES[precision]
    if llm_source == "torch":
        return LlamaForCausalLM.from_pretrained(d / "llm" / "torch", dtype=dtype).eval()
    if llm_source != "trtllm_ckpt":
        raise ConfigError(f"llm_source={llm_source!r} is not valid; choose one of ['torch', 'trtllm_ckpt']")
    from videoneva.runtime.trtllm_checkpoint import load_trtllm_checkpoint

    from transformers import LlamaConfig

    _, state = load_trtllm_checkpoint(d / "llm" / "trtllm_ckpt")
    config = LlamaConfig.from_pretrained(d / "llm" / "torch") if (d / "llm" / "torch").is_dir() else None
    if config is None:
        raise CheckpointError(f"{d}/llm/torch/config.json is needed to rebuild the LLM from the TensorRT-LLM checkpoint")
    # Built on CPU, not on the meta device: RoPE's inv_freq is a non-persistent buffer that a
    # state dict does not carry, so a meta-built model would keep it empty.
    model = LlamaForCausalLM(config)
    vocab = config.vocab_size  # TensorRT-LLM pads the vocabulary; cut it back
    state = {k: (v[:vocab] if k in ("model.embed_tokens.weight", "lm_head.weight") else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model.to(dtype).eval()


VISION_BACKENDS = ("onnx", "tensorrt")
LLM_BACKENDS = ("torch", "onnx", "tensorrt_llm")
# backend → (artifact in the engine dir, manifest "skipped" key of the build step that writes it)
_GPU_ARTIFACTS = {"tensorrt": ("vision/vision.plan", "vision_plan"),
                  "tensorrt_llm": ("llm/trtllm_engine", "trtllm_engine")}


def select_backends(manifest: dict, device: str = "auto") -> tuple[str, str]:
    """(vision backend, llm backend): what the build was asked for (manifest settings.vision/llm.backend).

    device=cpu always gives a portable pair (onnx, and the ONNX LLM when it was built, else torch),
    so a GPU-built engine directory still runs on a CPU machine; auto and cuda take the manifest's choice.

    Args:
        manifest: the engine directory's manifest.json.
        device: InferConfig.device ("auto" | "cpu" | "cuda").
    """
    settings = manifest.get("settings", {})
    vision = settings.get("vision", {}).get("backend", "onnx")
    llm = settings.get("llm", {}).get("backend", "torch")
    if vision not in VISION_BACKENDS or llm not in LLM_BACKENDS:
        raise CheckpointError(f"manifest.json asks for vision.backend={vision!r} / llm.backend={llm!r}; this videoneva "
                              f"runs vision {list(VISION_BACKENDS)} and llm {list(LLM_BACKENDS)}")
    if device == "cpu":
        portable = ("onnx", llm if llm in ("torch", "onnx") else "torch")
        if (vision, llm) != portable:
            log.info("device=cpu: running the portable %s + %s backends instead of %s + %s", *portable, vision, llm)
        return portable
    return vision, llm


def missing_gpu_artifact(d: Path, manifest: dict, backend: str) -> Optional[str]:
    """None when the artifact a GPU backend runs is in the engine directory, else why not and how to build it."""
    rel, step = _GPU_ARTIFACTS[backend]
    if (d / rel).exists():
        return None
    skipped = manifest.get("skipped", {}).get(step)
    why = f"the build skipped it ({skipped['reason']})" if skipped and skipped.get("reason") else "it is not there"
    cmd = " ".join(map(str, skipped["command"])) if skipped and skipped.get("command") else None
    hint = f"; build it on a GPU machine: {cmd}" if cmd else "; rebuild the engine directory on a GPU machine"
    return f"{rel} is missing: {why}{hint}"


def _gpu_backend_error(d: Path, manifest: dict, backend: str, reason: Optional[str]) -> Optional[str]:
    """One message naming everything that keeps `backend` from running here (artifact, library, CUDA)."""
    problems = [p for p in (missing_gpu_artifact(d, manifest, backend), reason) if p]
    if not problems:
        return None
    return (f"{d}/manifest.json asks for {backend} but it cannot run here: " + "; ".join(problems)
            + " (device=cpu runs the portable ONNX Runtime + torch backends)")


def load_vision(d: Path, manifest: dict, media: dict, backend: str):
    """The VisionEncoder for `backend`; BackendUnavailable names what is missing for a GPU backend."""
    if backend == "onnx":
        from videoneva.runtime.onnx_backend import OnnxVisionEncoder

        return OnnxVisionEncoder(d / "vision" / "vision.onnx", media["image_token_len"], media["hidden_size"])
    from videoneva.runtime.tensorrt_backend import (BackendUnavailable, TensorRTVisionEncoder,
                                                    tensorrt_unavailable_reason)

    msg = _gpu_backend_error(d, manifest, backend, tensorrt_unavailable_reason())
    if msg:
        raise BackendUnavailable(msg)
    return TensorRTVisionEncoder(d / "vision" / "vision.plan", media["image_token_len"], media["hidden_size"])


def load_llm(d: Path, manifest: dict, media: dict, backend: str, tokenizer, precision: str, device: str = "cpu"):
    """The LanguageModel for `backend`; BackendUnavailable names what is missing for a GPU backend.

    device: InferConfig.device; the torch LLM runs there (auto: CUDA when present), and device=cuda
    without CUDA is refused.
    """
    if backend == "torch":
        from videoneva.runtime.loader import pick_device
        from videoneva.runtime.torch_backend import TorchLanguageModel

        model = load_engine_llm(d, manifest, precision).to(pick_device(device))
        return TorchLanguageModel(model, tokenizer, media["image_token_id"], fake_id_base=fake_id_base(d, media))
    if backend == "onnx":
        from transformers import AutoConfig

        from videoneva.runtime.onnx_backend import OnnxLanguageModel

        if precision != "32":
            log.warning("llm backend onnx runs the float32 graph it was built with (trainer.precision=%s ignored)",
                        precision)
        # as many intra-op threads as torch is given (serve torch_threads=N), so the backends share cores alike
        return OnnxLanguageModel(d / "llm" / "onnx", AutoConfig.from_pretrained(d / "llm" / "torch"), tokenizer,
                                 media["image_token_id"], threads=torch.get_num_threads(),
                                 fake_id_base=fake_id_base(d, media))
    from videoneva.runtime.tensorrt_backend import BackendUnavailable
    from videoneva.runtime.trtllm_backend import TensorRTLLMLanguageModel, trtllm_unavailable_reason

    msg = _gpu_backend_error(d, manifest, backend, trtllm_unavailable_reason())
    if msg:
        raise BackendUnavailable(msg)
    llm = TensorRTLLMLanguageModel(d / "llm" / "trtllm_engine", tokenizer, media["image_token_id"])
    if llm.vocab_size != fake_id_base(d, media):
        raise CheckpointError(f"{d}: the TensorRT-LLM engine's vocabulary is {llm.vocab_size} but media.json's "
                              f"fake_id_base is {fake_id_base(d, media)}; rebuild the engine directory")
    return llm


def engine_settings(d: Path, cfg: InferConfig) -> tuple[dict, dict, PipelineSettings, Any, MediaRoot]:
    """(manifest, media.json, PipelineSettings, tokenizer, media root) of an engine dir, with cfg's overrides.

    Reads no weights: the Triton preprocess/postprocess models need only this.
    """
    manifest, media = read_engine_dir(d)
    s = CheckpointSettings.from_dict(media["settings"])
    tok = AutoTokenizer.from_pretrained(d / "tokenizer")
    dd = cfg.data
    if dd.frame_token_pool not in (None, s.frame_token_pool):
        raise ConfigError(f"data.frame_token_pool={dd.frame_token_pool}: this engine was built with "
                          f"{s.frame_token_pool}; rebuild the engine to change it")
    if dd.image_token_len not in (None, media["image_token_len"]):
        raise ConfigError(f"data.image_token_len={dd.image_token_len} conflicts with the engine's {media['image_token_len']}")
    ms = MediaSettings(
        media_type=dd.media_type or cfg.inference.media_type or s.media_type,
        num_frames=dd.num_frames if dd.num_frames is not None else s.num_frames,
        splice_single_frame=dd.splice_single_frame if dd.splice_single_frame is not None else s.splice_single_frame,
        image_size=media["image_size"], crop_size=media["image_size"], image_mean=tuple(s.image_mean),
        image_std=tuple(s.image_std), image_aspect_ratio=dd.image_aspect_ratio or s.image_aspect_ratio,
        decoder=dd.decoder or "auto")
    settings = PipelineSettings(template=dd.conv_template or s.conv_template, media=ms,
                                image_token_len=media["image_token_len"],
                                insert_media_token=cfg.inference.insert_media_token, add_bos=cfg.inference.add_BOS,
                                model_id=cfg.model_id or s.model_id)
    root = cfg.inference.media_base_path or dd.video_folder or dd.image_folder
    return manifest, media, settings, tok, MediaRoot(root)


def engine_front(engine_dir: str | Path, cfg: InferConfig) -> Front:
    """The weight-free request stages (media, prompt ids, detokenizing) of an engine directory."""
    d = Path(engine_dir)
    _, media, settings, tok, root = engine_settings(d, cfg)
    llm_config = d / "llm" / "torch" / "config.json"
    if not llm_config.is_file():
        raise CheckpointError(f"{llm_config} is missing; rebuild the engine directory")
    lc = json.loads(llm_config.read_text())
    return Front(settings, tok, root, fake_id_base(d, media), int(media["image_token_id"]),
                 int(lc["max_position_embeddings"]))


def pipeline_from_engine_dir(engine_dir: Path, cfg: InferConfig, cache_bytes: int = 256 * 2**20) -> Pipeline:
    """The backends the manifest names (ONNX Runtime + torch, or TensorRT + TensorRT-LLM on a GPU machine).

    device=cpu runs the portable pair whatever was built; a GPU backend that cannot run here raises
    BackendUnavailable naming the missing library, CUDA device or artifact.
    """
    d = Path(engine_dir)
    manifest, media, settings, tok, root = engine_settings(d, cfg)
    vision_backend, llm_backend = select_backends(manifest, cfg.device)
    # vision first: the TensorRT-LLM executor sizes its KV cache from the GPU memory left free
    vision = load_vision(d, manifest, media, vision_backend)
    llm = load_llm(d, manifest, media, llm_backend, tok, cfg.trainer.precision, cfg.device)
    log.info("engine %s: vision %s, llm %s", d, vision_backend, llm_backend)
    return Pipeline(vision, llm, tok, settings, root, FeatureCache(cache_bytes))
