"""What a build will make, checked against the model and its inputs before any export starts.

`plan_build` runs every check that can fail fast (sizes against the model's context, the
quantization settings and calibration data, the tensor/pipeline split), so a mistake is named
in seconds instead of after the vision export. `build_environment` records the machine an
engine directory was built on (GPU, tool versions, image) in its manifest.
"""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Optional

from videoneva.errors import ConfigError, MediaError
from videoneva.model.vision import tokens_per_frame

DEFAULT_OUTPUT_LEN = 256  # generated tokens when max_output_len is not set (capped to fit the context)
MIN_TEXT_LEN = 32         # prompt tokens besides the media a derived max_input_len must leave
QUANT_ALGORITHMS = ("awq", "fp8")  # what the build quantizes with (modelopt); int8_sq is refused
# Packages whose versions the manifest records (the ones an engine directory depends on).
VERSIONED = ("videoneva", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "nvidia-modelopt",
             "tensorrt", "tensorrt_llm", "nvidia-dali-cuda120", "nvidia-dali-cuda130")


def sequence_lengths(max_input_len: Optional[int], max_output_len: Optional[int], context: int,
                     media_len: int) -> tuple[int, int]:
    """(max_input_len, max_output_len) of the engine: the given ones, or derived from the model's context.

    Unset, max_output_len is DEFAULT_OUTPUT_LEN capped so the prompt keeps room for one video and
    MIN_TEXT_LEN text tokens, and max_input_len is the rest of the context.

    Args:
        max_input_len: build setting (None: derive).
        max_output_len: build setting (None: derive).
        context: the LLM's max_position_embeddings.
        media_len: positions one video takes (frames × tokens per frame).
    """
    need = media_len + MIN_TEXT_LEN
    out = max_output_len
    if out is None:
        budget = context - (max_input_len if max_input_len is not None else need)
        out = min(DEFAULT_OUTPUT_LEN, budget)
        if out < 1:
            raise ConfigError(
                f"the model's context ({context} positions) leaves no room to generate: one video takes "
                f"{media_len} positions and the prompt at least {need if max_input_len is None else max_input_len}; "
                "use fewer frames (data.num_frames), data.frame_token_pool, or a smaller max_input_len")
    inp = max_input_len if max_input_len is not None else context - out
    if inp <= media_len:
        raise ConfigError(f"max_input_len={inp} leaves no room for text: one video takes {media_len} positions "
                          f"(the model's context is {context}); use fewer frames (data.num_frames), "
                          "data.frame_token_pool, or a smaller max_output_len")
    if inp + out > context:
        raise ConfigError(f"max_input_len + max_output_len = {inp} + {out} = {inp + out} exceeds the model's context "
                          f"({context}); leave one of them unset to derive it from the context")
    return inp, out


def calibration_source(cfg, ckpt) -> tuple[Path, Path]:
    """(calibration json, its media root), checked: the file parses, has samples, and their media exist.

    Args:
        cfg: the BuildConfig (quantization.calib_data / calib_media_root / num_samples).
        ckpt: the loaded checkpoint (its recorded data_path is the fallback).
    """
    from videoneva.media.sources import MediaRoot
    from videoneva.train.data import load_conversations

    q = cfg.quantization
    recorded = ckpt.settings.source.get("data_path")
    path = q.calib_data or recorded
    if not path:
        raise ConfigError("quantization.enable=true needs real calibration samples: set quantization.calib_data="
                          "FILE.json (LLaVA conversation json with videos/images)")
    if not Path(path).is_file():
        which = "quantization.calib_data" if q.calib_data else "the checkpoint's recorded data_path"
        raise ConfigError(f"{which} {path} is not a file; set quantization.calib_data=FILE.json (LLaVA "
                          "conversation json with videos/images)")
    records = load_conversations(path)[: q.num_samples]
    if not records:
        raise ConfigError(f"quantization.calib_data {path} holds no conversation records")
    root_dir = Path(q.calib_media_root or Path(path).parent)
    if not root_dir.exists():
        raise ConfigError(f"quantization.calib_media_root {root_dir} does not exist")
    root = MediaRoot(root_dir)
    missing = []
    for i, r in enumerate(records):
        rel = r.get("video") or r.get("image")
        if rel is None:
            continue
        try:
            root.local_path(rel)
        except MediaError as exc:
            missing.append(f"record {i}: {exc}")
    if missing:
        raise ConfigError(f"calibration media of {path} (root {root_dir}) cannot be read: " + "; ".join(missing[:5])
                          + (f"; and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return Path(path), root_dir


def plan_build(cfg, ckpt) -> dict:
    """Validate settings against the model before any long work; returns the derived sizes.

    Args:
        cfg: the BuildConfig.
        ckpt: the loaded checkpoint.
    """
    from engine_build.commands import max_multimodal_len, trt_precision
    from engine_build.llm import check_awq_settings, check_parallel

    s = ckpt.settings
    trt_precision(cfg.trainer.precision)
    pool = cfg.data.frame_token_pool or s.frame_token_pool
    tpf = tokens_per_frame(ckpt.image_size, ckpt.patch_size, pool)
    if cfg.data.image_token_len not in (None, tpf):
        raise ConfigError(f"data.image_token_len={cfg.data.image_token_len} conflicts with the model: "
                          f"({ckpt.image_size} // {ckpt.patch_size} // pool {pool})^2 = {tpf}")
    num_frames = cfg.data.num_frames if cfg.data.num_frames is not None else s.num_frames
    if num_frames == -1:
        raise ConfigError("data.num_frames=-1 (all frames) cannot size an engine; give a frame count")
    frames = 1 if (cfg.data.splice_single_frame or s.splice_single_frame) else num_frames
    tc = ckpt.model.config.text_config
    inp, out = sequence_lengths(cfg.max_input_len, cfg.max_output_len, int(tc.max_position_embeddings),
                                frames * tpf)
    check_parallel(tc, cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size)
    calib = None
    if cfg.quantization.enable:
        algo = cfg.quantization.algorithm
        if algo not in QUANT_ALGORITHMS:
            raise ConfigError(f"quantization.algorithm={algo!r} is not supported by the build; choose one of "
                              f"{list(QUANT_ALGORITHMS)} (awq: W4A16 weights, any GPU; fp8: FP8 weights and "
                              "activations, Hopper or newer)")
        if algo == "awq":
            check_awq_settings(tc, cfg.quantization.group_size, cfg.tensor_model_parallel_size,
                               cfg.pipeline_model_parallel_size)
        calib = [str(p) for p in calibration_source(cfg, ckpt)]
    return {"tokens_per_frame": tpf, "num_frames": num_frames, "frame_token_pool": pool,
            "max_input_len": inp, "max_output_len": out, "calibration": calib,
            "max_multimodal_len": max_multimodal_len(cfg.max_batch_size, frames, tpf)}


def gpu_info() -> Optional[dict]:
    """The CUDA device this process builds on (name, compute capability, CUDA runtime), or None."""
    import torch

    try:
        if not torch.cuda.is_available():
            return None
        i = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(i)
        return {"name": torch.cuda.get_device_name(i), "compute_capability": f"{major}.{minor}",
                "count": torch.cuda.device_count(), "cuda_runtime": torch.version.cuda}
    except RuntimeError as exc:  # a broken driver raises instead of answering
        return {"error": str(exc)}


def build_environment() -> dict:
    """What the manifest records about the build machine: package versions, GPU, and the image."""
    versions = {"python": platform.python_version()}
    for pkg in VERSIONED:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"versions": versions, "gpu": gpu_info(), "image": os.environ.get("VIDEONEVA_IMAGE")}
