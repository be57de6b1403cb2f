"""`videoneva build checkpoint=DIR output=DIR …`: checkpoint → engine directory (atomic, self-describing).

Steps, each reading only the previous stage's output: load + validate (plan.py: every check that
can fail fast, before any long work) → vision encoder to ONNX (+ TensorRT plan on GPU) → LLM
weights for the torch backend (+ the LLM as ONNX with its KV cache when llm.backend=onnx) →
TensorRT-LLM checkpoint (AWQ W4A16 or FP8 through modelopt when quantization.enable) →
trtllm-build on GPU → tokenizer, media.json, manifest.json → rename into place.

media.json records `fake_id_base`: the vocabulary size of the TensorRT-LLM checkpoint (modelopt
pads it to a multiple of 64 for AWQ). Media positions carry ids fake_id_base + k on every path
(in-process, Triton preprocess, every LLM backend), so they agree with the engine's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from videoneva.checkpoint.native import LoadedCheckpoint, load_checkpoint
from videoneva.config import DataConfig, QuantizationConfig, TrainerConfig, _help, config_help, load_config
from videoneva.errors import ConfigError
from videoneva.runtime.engine_dir import ENGINE_FORMAT

from engine_build.plan import QUANT_ALGORITHMS, build_environment, plan_build

log = logging.getLogger(__name__)


@dataclass
class VisionBuildConfig:
    backend: str = _help("onnx | tensorrt (tensorrt also writes the ONNX it is built from)", default="onnx")
    opset: int = _help("ONNX opset", default=17)


@dataclass
class LlmBuildConfig:
    backend: str = _help("torch | onnx (ONNX Runtime, float32: the fast CPU path for small LLMs) | tensorrt_llm",
                         default="torch")
    opset: int = _help("ONNX opset of llm/onnx/llm.onnx (llm.backend=onnx)", default=17)


@dataclass
class BuildQuantConfig(QuantizationConfig):
    calib_data: Optional[str] = _help("LLaVA conversation json with real samples for calibration "
                                      "(default: the checkpoint's own data_path if recorded)", default=None)
    calib_media_root: Optional[str] = _help("media root of calib_data (default: its folder)", default=None)


@dataclass
class BuildConfig:
    checkpoint: Optional[str] = _help("native dir, transformers Llava dir or .nemo", default=None)
    base_model_file: Optional[str] = _help("NeMo GPT .nemo with the LLM (projector-only checkpoint)", default=None)
    vision_tower: Optional[str] = _help("local HF CLIP dir for a .nemo without the tower", default=None)
    output: Optional[str] = _help("engine directory to write", default=None)
    overwrite: bool = _help("replace an existing engine directory", default=False)
    tensor_model_parallel_size: int = _help("TensorRT-LLM tensor parallel size", default=1)
    pipeline_model_parallel_size: int = _help("TensorRT-LLM pipeline parallel size", default=1)
    max_batch_size: int = _help("requests per engine batch", default=8)
    max_input_len: Optional[int] = _help("prompt tokens incl. media positions (default: the model's context "
                                         "minus max_output_len)", default=None)
    max_output_len: Optional[int] = _help("generated tokens (default: 256, less when the context is short)",
                                          default=None)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    vision: VisionBuildConfig = field(default_factory=VisionBuildConfig)
    llm: LlmBuildConfig = field(default_factory=LlmBuildConfig)
    quantization: BuildQuantConfig = field(default_factory=BuildQuantConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.vision.backend not in ("onnx", "tensorrt"):
            raise ConfigError(f"vision.backend={self.vision.backend!r} is not valid; choose one of ['onnx', 'tensorrt']")
        if self.llm.backend not in ("torch", "onnx", "tensorrt_llm"):
            raise ConfigError(f"llm.backend={self.llm.backend!r} is not valid; choose one of ['torch', 'onnx', 'tensorrt_llm']")
        if self.llm.backend == "onnx" and self.quantization.enable:
            raise ConfigError("llm.backend=onnx exports the unquantized float32 LLM; an AWQ model runs on "
                              "llm.backend=tensorrt_llm (GPU) or, dequantized, on llm.backend=torch")
        for key in ("max_batch_size", "max_input_len", "max_output_len", "tensor_model_parallel_size",
                    "pipeline_model_parallel_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.quantization.enable and self.quantization.algorithm not in QUANT_ALGORITHMS:
            raise ConfigError(f"quantization.algorithm={self.quantization.algorithm!r} is not supported by the "
                              f"build; choose one of {list(QUANT_ALGORITHMS)}")


def checkpoint_hash(path: str | Path) -> str:
    """sha256 over the checkpoint's files (names + bytes), so the manifest names its source exactly."""
    p, h = Path(path), hashlib.sha256()
    files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _calibration_batches(cfg: BuildConfig, ckpt: LoadedCheckpoint, plan: dict) -> list[dict]:
    """Real multimodal samples as LLM inputs (inputs_embeds with visual rows), not random token ids."""
    from videoneva.media.settings import MediaSettings
    from videoneva.media.sources import MediaRoot
    from videoneva.model.vision import VisionFeatures
    from videoneva.train.data import ConversationDataset, load_conversations

    path, media_root = plan["calibration"]  # checked by plan_build
    records = load_conversations(path)[: cfg.quantization.num_samples]
    s, size = ckpt.settings, ckpt.image_size
    media = dataclasses.replace(MediaSettings.from_checkpoint(s, size), num_frames=plan["num_frames"])
    vision = VisionFeatures(ckpt.model, plan["frame_token_pool"]).eval()
    root = MediaRoot(media_root)
    ds = ConversationDataset(records, ckpt.tokenizer, s.conv_template, media, root, vision.tokens, cache_media=False)
    emb, image_id, batches = ckpt.model.get_input_embeddings(), ckpt.model.config.image_token_id, []
    with torch.inference_mode():
        for i in range(len(ds)):
            ex = ds[i]
            ids = torch.tensor([ex.input_ids])
            x = emb(ids)
            if ex.pixel_values is not None:
                feats = vision(torch.from_numpy(ex.pixel_values).to(x.dtype))
                x[ids == image_id] = feats.reshape(-1, feats.shape[-1])
            batches.append({"inputs_embeds": x.clone(), "attention_mask": torch.ones_like(ids)})
    return batches


def build(cfg: BuildConfig) -> dict:
    """Build the engine directory; returns the manifest."""
    from engine_build import commands, llm as llm_build, vision as vision_build

    if not cfg.checkpoint or not cfg.output:
        raise ConfigError("checkpoint=PATH and output=DIR are required (see --help)")
    out = Path(cfg.output)
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"output {out} already exists; pass overwrite=true to replace it")
    t0 = time.perf_counter()
    ckpt = load_checkpoint(cfg.checkpoint, "32", cfg.base_model_file, cfg.vision_tower)
    if len(ckpt.tokenizer) < ckpt.model.config.text_config.vocab_size:
        # Rows past the tokenizer (NeMo's vocabulary padding) leave every engine; TensorRT-LLM masks its own
        # padding past the checkpoint's vocab_size (cpp/tensorrt_llm/kernels/penaltyKernels.cu).
        ckpt.model.resize_token_embeddings(len(ckpt.tokenizer))
    plan = plan_build(cfg, ckpt)  # every check that can fail fast happens here
    precision = cfg.trainer.precision
    trt_dtype = {"32": "float32", "16": "float16", "bf16": "bfloat16"}[precision]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building.", dir=out.parent))
    built, skipped = {}, {}
    try:
        # 1. vision encoder
        (tmp / "vision").mkdir()
        info = vision_build.export_vision_onnx(ckpt.model, tmp / "vision" / "vision.onnx", ckpt.image_size,
                                               frame_token_pool=plan["frame_token_pool"], opset=cfg.vision.opset)
        built["vision_onnx"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in info.items()}
        trt_cmd = commands.trtexec_command(tmp / "vision" / "vision.onnx", tmp / "vision" / "vision.plan",
                                           plan["num_frames"], cfg.max_batch_size, ckpt.image_size, precision)
        if cfg.vision.backend == "tensorrt":
            try:
                built["vision_plan"] = vision_build.build_vision_plan(
                    tmp / "vision" / "vision.onnx", tmp / "vision" / "vision.plan", plan["num_frames"],
                    cfg.max_batch_size, precision)
            except vision_build.TensorRTUnavailable as exc:
                skipped["vision_plan"] = {"reason": str(exc), "command": trt_cmd}
        else:
            skipped["vision_plan"] = {"reason": "vision.backend=onnx", "command": trt_cmd}
        # 2. LLM weights for the torch backend
        lm = llm_build.extract_causal_lm(ckpt.model)
        lm.save_pretrained(tmp / "llm" / "torch", safe_serialization=True)
        built["llm_torch"] = {"path": "llm/torch"}
        if cfg.llm.backend == "onnx":
            from engine_build.llm_onnx import export_llm_onnx

            built["llm_onnx"] = export_llm_onnx(lm, tmp / "llm" / "onnx", opset=cfg.llm.opset)
        # 3. TensorRT-LLM checkpoint (AWQ when asked), calibrated on real multimodal samples
        quantized = cfg.quantization.enable
        algorithm = cfg.quantization.algorithm if quantized else None
        export_dtype = "float16" if precision == "32" else trt_dtype  # TensorRT-LLM engines run fp16/bf16
        if quantized:
            batches = _calibration_batches(cfg, ckpt, plan)
            lm = llm_build.calibration_device(lm, export_dtype)
            lm = llm_build.quantize(lm, algorithm, batches, group_size=cfg.quantization.group_size)
        ck_cfg = llm_build.export_trtllm_checkpoint(lm, tmp / "llm" / "trtllm_ckpt", export_dtype,
                                                    cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size)
        built["trtllm_checkpoint"] = {"path": "llm/trtllm_ckpt", "quantization": ck_cfg.get("quantization"),
                                      "dtype": ck_cfg.get("dtype")}
        # 4. TensorRT-LLM engine
        build_cmd = commands.trtllm_build_command(
            tmp / "llm" / "trtllm_ckpt", tmp / "llm" / "trtllm_engine", cfg.max_batch_size, plan["max_input_len"],
            plan["max_output_len"], plan["max_multimodal_len"], export_dtype,
            gemm_plugin="auto" if algorithm == "fp8" else None)
        if cfg.llm.backend == "tensorrt_llm":
            built_engine = llm_build.run_trtllm_build(build_cmd) if hasattr(llm_build, "run_trtllm_build") else None
            if built_engine is None:
                skipped["trtllm_engine"] = {"reason": "tensorrt_llm / CUDA not available here", "command": build_cmd}
            else:
                built["trtllm_engine"] = built_engine
        else:
            skipped["trtllm_engine"] = {"reason": f"llm.backend={cfg.llm.backend}", "command": build_cmd}
        # 5. tokenizer, media settings, manifest
        ckpt.tokenizer.save_pretrained(tmp / "tokenizer")
        settings = dataclasses.replace(ckpt.settings, frame_token_pool=plan["frame_token_pool"],
                                       num_frames=plan["num_frames"])
        media = {"settings": dataclasses.asdict(settings), "image_size": ckpt.image_size,
                 "patch_size": ckpt.patch_size, "image_token_len": plan["tokens_per_frame"],
                 "hidden_size": ckpt.model.config.text_config.hidden_size,
                 "image_token_id": ckpt.model.config.image_token_id,
                 "fake_id_base": int(ck_cfg["vocab_size"])}
        (tmp / "media.json").write_text(json.dumps(media, indent=2) + "\n")
        manifest = {
            "format_version": ENGINE_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": {"checkpoint": str(cfg.checkpoint), "kind": ckpt.kind, "sha256": checkpoint_hash(cfg.checkpoint)},
            "settings": dataclasses.asdict(cfg), "derived": plan, **build_environment(),
            "llm": {"quantized": quantized, "algorithm": algorithm},
            "built": built, "skipped": skipped, "build_seconds": round(time.perf_counter() - t0, 2),
        }
        # paths and commands recorded while building name the final directory, not the temporary one
        text = json.dumps(manifest, indent=2, default=str).replace(str(tmp), str(out))
        (tmp / "manifest.json").write_text(text + "\n")
        manifest = json.loads(text)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)  # atomic: `serve` never sees a half-built directory
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(config_help(BuildConfig, "videoneva build checkpoint=DIR output=DIR [key=value …]"))
        return 0
    cfg: BuildConfig = load_config(BuildConfig, argv)
    m = build(cfg)
    print(f"build: wrote {cfg.output} in {m['build_seconds']} s", file=sys.stderr)
    for name, item in m["skipped"].items():
        print(f"  skipped {name}: {item['reason']}\n    {' '.join(map(str, item['command']))}", file=sys.stderr)
    return 0
