"""Load the backends of an engine directory (described by runtime/engine_dir.py) and build a Pipeline.

The backends are picked from what the build was asked for and what this machine can run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from videoneva.errors import CheckpointError, ConfigError
from videoneva.runtime.engine_dir import EngineDir

if TYPE_CHECKING:  # torch and transformers load only with the backends that need them
    from videoneva.config import InferConfig
    from videoneva.media.sources import MediaRoot
    from videoneva.runtime.front import Front, PipelineSettings
    from videoneva.runtime.pipeline import Pipeline

log = logging.getLogger(__name__)


def load_engine_llm(d: Path, manifest: dict, precision: str, llm_source: Optional[str] = None):
    """The LLM for the torch backend: llm/torch weights, or the TensorRT-LLM checkpoint dequantized.

    llm_source: "torch" | "trtllm_ckpt" | None (the quantized checkpoint when the build quantized,
    so `infer engine_dir=…` measures the AWQ model's accuracy on CPU).
    """
    from transformers import LlamaForCausalLM

    from videoneva.checkpoint.native import DTYPES

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


# backend → (artifact in the engine dir, manifest "skipped" key of the build step that writes it)
_GPU_ARTIFACTS = {"tensorrt": ("vision/vision.plan", "vision_plan"),
                  "tensorrt_llm": ("llm/trtllm_engine", "trtllm_engine")}


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


def load_vision(eng: EngineDir, backend: str, threads: Optional[int] = None):
    """The VisionEncoder for `backend` (threads: ONNX Runtime intra-op threads, None: one per core);
    BackendUnavailable names what is missing for a GPU backend."""
    if backend == "onnx":
        from videoneva.runtime.onnx_vision import OnnxVisionEncoder

        return OnnxVisionEncoder(eng.path / "vision" / "vision.onnx", eng.image_token_len, eng.hidden_size, threads)
    from videoneva.runtime.tensorrt_backend import (BackendUnavailable, TensorRTVisionEncoder,
                                                    tensorrt_unavailable_reason)

    msg = _gpu_backend_error(eng.path, eng.manifest, backend, tensorrt_unavailable_reason())
    if msg:
        raise BackendUnavailable(msg)
    return TensorRTVisionEncoder(eng.path / "vision" / "vision.plan", eng.image_token_len, eng.hidden_size)


def load_tokenizer(eng: EngineDir):
    """The engine's tokenizer: transformers' AutoTokenizer, or the NeMo SentencePiece tokenizer."""
    from videoneva.checkpoint.native import load_tokenizer as load

    return load(eng.path / "tokenizer")


@dataclass
class ExecutorOptions:
    """How an LLM batches requests in flight.

    Attributes:
        max_batch_size: most sequences decoded at once (the rest queue).
        max_kv_tokens: CPU LLMs: most KV-cache positions of the batch (None: max_batch_size × context).
        kv_cache_free_gpu_memory_fraction: TensorRT-LLM: share of the GPU memory left free after the
            engine (and the vision plan, loaded first) for its paged KV cache.
        prefix_cache_bytes: CPU LLMs: bytes of prompt-prefix caches kept for reuse (0: off).
    """

    max_batch_size: int = 16
    max_kv_tokens: Optional[int] = None
    kv_cache_free_gpu_memory_fraction: Optional[float] = None
    prefix_cache_bytes: int = 0

    @classmethod
    def from_params(cls, params: dict[str, str]) -> "ExecutorOptions":
        """From a Triton model's string parameters (empty: the default)."""
        kv, frac = params.get("max_kv_tokens") or "", params.get("kv_cache_free_gpu_memory_fraction") or ""
        return cls(int(params.get("llm_max_batch_size") or cls.max_batch_size), int(kv) if kv else None,
                   float(frac) if frac else None, int(params.get("prefix_cache_bytes") or 0))


def load_llm(eng: EngineDir, backend: str, tokenizer, precision: str, executor: Optional[ExecutorOptions] = None,
             device: str = "cpu"):
    """The LanguageModel for `backend`; BackendUnavailable names what is missing for a GPU backend.

    With `executor`, the LLM batches concurrent requests in flight (its generate() may be called
    from many threads, and it has submit()); without, it answers one request at a time. device:
    InferConfig.device; the torch LLM runs there (auto: CUDA when present; cuda without CUDA is refused).
    """
    d = eng.path
    if backend in ("torch", "onnx"):
        llm = _cpu_llm(eng, backend, tokenizer, precision, device)
        if executor is None:
            return llm
        from videoneva.runtime.batching import BatchingLanguageModel

        return BatchingLanguageModel(llm, executor.max_batch_size, executor.max_kv_tokens, executor.prefix_cache_bytes)
    from videoneva.runtime.tensorrt_backend import BackendUnavailable
    from videoneva.runtime.trtllm_backend import TensorRTLLMLanguageModel, trtllm_unavailable_reason

    msg = _gpu_backend_error(d, eng.manifest, backend, trtllm_unavailable_reason())
    if msg:
        raise BackendUnavailable(msg)
    ex = executor or ExecutorOptions()
    llm = TensorRTLLMLanguageModel(d / "llm" / "trtllm_engine", tokenizer, eng.image_token_id, ex.max_batch_size,
                                   ex.kv_cache_free_gpu_memory_fraction)
    if llm.vocab_size != eng.vocab_size:
        raise CheckpointError(f"{d}: the TensorRT-LLM engine's vocabulary is {llm.vocab_size} but media.json's "
                              f"fake_id_base is {eng.vocab_size}; rebuild the engine directory")
    return llm


def _cpu_llm(eng: EngineDir, backend: str, tokenizer, precision: str, device: str = "cpu"):
    d = eng.path
    if backend == "torch":
        from videoneva.runtime.loader import pick_device
        from videoneva.runtime.torch_backend import TorchLanguageModel, transpose_linears

        model = load_engine_llm(d, eng.manifest, precision).to(pick_device(device))
        transpose_linears(model)  # CPU float32 only: batched decode steps read the weights faster
        return TorchLanguageModel(model, tokenizer, eng.image_token_id, fake_id_base=eng.vocab_size)
    import torch
    from transformers import AutoConfig

    from videoneva.runtime.onnx_backend import OnnxLanguageModel

    if precision != "32":
        log.warning("llm backend onnx runs the float32 graph it was built with (trainer.precision=%s ignored)",
                    precision)
    # as many intra-op threads as torch is given (serve threads=N), so the backends share cores alike
    return OnnxLanguageModel(d / "llm" / "onnx", AutoConfig.from_pretrained(d / "llm" / "torch"), tokenizer,
                             eng.image_token_id, threads=torch.get_num_threads(), fake_id_base=eng.vocab_size)


def front_settings(eng: EngineDir, cfg: "InferConfig", max_num_frames: Optional[int] = None) -> "PipelineSettings":
    """The prompt and media settings of an engine directory with cfg's overrides."""
    from videoneva.runtime.front import PipelineSettings

    return PipelineSettings(template=cfg.data.conv_template or eng.settings.conv_template,
                            media=eng.media_settings(cfg.data, cfg.inference.media_type),
                            image_token_len=eng.image_token_len, insert_media_token=cfg.inference.insert_media_token,
                            add_bos=cfg.inference.add_BOS, model_id=cfg.model_id or eng.settings.model_id,
                            max_num_frames=max_num_frames)


def media_root_of(cfg: "InferConfig") -> Optional[str]:
    return cfg.inference.media_base_path or cfg.data.video_folder or cfg.data.image_folder


def engine_front(eng: EngineDir, cfg: "InferConfig", media_root: Optional["MediaRoot"],
                 max_num_frames: Optional[int] = None) -> "Front":
    """The weight-free request steps of an engine directory (the Triton entry model's).

    A question without a media token gets the media where the model was trained to see it (the
    checkpoint's insert_media_token, else left), unless inference.insert_media_token or the
    request says otherwise.
    """
    from videoneva.runtime.front import Front

    settings = front_settings(eng, cfg, max_num_frames)
    settings.insert_media_token = settings.insert_media_token or eng.settings.insert_media_token or "left"
    return Front(settings, load_tokenizer(eng), media_root, eng.vocab_size, eng.image_token_id, eng.max_context)


def pipeline_from_engine_dir(engine_dir: str | Path, cfg: "InferConfig", cache_bytes: int = 256 * 2**20) -> "Pipeline":
    """The backends the manifest names (ONNX Runtime + torch, or TensorRT + TensorRT-LLM on a GPU machine).

    device=cpu runs the portable pair whatever was built; a GPU backend that cannot run here raises
    BackendUnavailable naming the missing library, CUDA device or artifact. With cfg.concurrency > 1
    the LLM batches the lines answered at once in flight.
    """
    from videoneva.media.sources import MediaRoot
    from videoneva.runtime.cache import FeatureCache
    from videoneva.runtime.pipeline import Pipeline

    eng = EngineDir.read(engine_dir)
    settings = front_settings(eng, cfg)
    vision_backend, llm_backend = eng.backends(cfg.device)
    tok = load_tokenizer(eng)
    # vision first: the TensorRT-LLM executor sizes its KV cache from the GPU memory left free
    vision = load_vision(eng, vision_backend)
    executor = (ExecutorOptions(cfg.llm_max_batch_size, cfg.max_kv_tokens, prefix_cache_bytes=cfg.prefix_cache_bytes)
                if cfg.concurrency > 1 else None)
    llm = load_llm(eng, llm_backend, tok, cfg.trainer.precision, executor, cfg.device)
    log.info("engine %s: vision %s, llm %s", eng.path, vision_backend, llm_backend)
    return Pipeline(vision, llm, tok, settings, MediaRoot(media_root_of(cfg)), FeatureCache(cache_bytes))
