"""Build a Pipeline from an InferConfig: checkpoint (torch backends) or engine directory."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from videoneva.checkpoint.native import LoadedCheckpoint, load_checkpoint
from videoneva.config import InferConfig
from videoneva.errors import ConfigError
from videoneva.media.settings import MediaSettings
from videoneva.media.sources import MediaRoot
from videoneva.runtime.cache import FeatureCache
from videoneva.runtime.pipeline import Pipeline, PipelineSettings, resolve_image_token_len
from videoneva.runtime.torch_backend import TorchLanguageModel, TorchVisionEncoder

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but CUDA is not available; use device=cpu or device=auto")
    return torch.device(name)


def pipeline_from_checkpoint(ckpt: LoadedCheckpoint, cfg: InferConfig, cache_bytes: int = 256 * 2**20) -> Pipeline:
    """Torch backends over a loaded checkpoint, settings merged from the checkpoint and cfg."""
    if cfg.tensor_model_parallel_size > 1 or cfg.pipeline_model_parallel_size > 1:
        log.warning("tensor/pipeline_model_parallel_size > 1 apply to TensorRT-LLM engine builds; "
                    "the torch backend runs the whole model on one device")
    device = pick_device(cfg.device)
    if device.type == "cpu" and cfg.trainer.precision != "32":
        log.warning("trainer.precision=%s on CPU: half-precision matmul is very slow on most CPUs; "
                    "trainer.precision=32 is recommended", cfg.trainer.precision)
    ckpt.model.to(device)
    pool = cfg.data.frame_token_pool or ckpt.settings.frame_token_pool
    vision = TorchVisionEncoder(ckpt.model, frame_token_pool=pool)
    llm = TorchLanguageModel(ckpt.model, ckpt.tokenizer)
    if cfg.concurrency > 1:  # lines answered at once are decoded together
        from videoneva.runtime.batching import BatchingLanguageModel

        llm = BatchingLanguageModel(llm, cfg.llm_max_batch_size, cfg.max_kv_tokens, cfg.prefix_cache_bytes)
    settings = PipelineSettings(
        template=cfg.data.conv_template or ckpt.settings.conv_template,
        media=MediaSettings.from_checkpoint(ckpt.settings, ckpt.image_size, cfg.data, cfg.inference.media_type),
        image_token_len=resolve_image_token_len(ckpt.image_size, ckpt.patch_size, pool, cfg.data.image_token_len),
        insert_media_token=cfg.inference.insert_media_token,
        add_bos=cfg.inference.add_BOS,
        model_id=cfg.model_id or ckpt.settings.model_id,
    )
    root = cfg.inference.media_base_path or cfg.data.video_folder or cfg.data.image_folder
    return Pipeline(vision, llm, ckpt.tokenizer, settings, MediaRoot(root), FeatureCache(cache_bytes))


def build_pipeline(cfg: InferConfig) -> Pipeline:
    """Load what cfg names (neva_model_file [+ base_model_file] or engine_dir) into a Pipeline."""
    if cfg.engine_dir:
        from videoneva.runtime.engine import pipeline_from_engine_dir

        return pipeline_from_engine_dir(Path(cfg.engine_dir), cfg)
    if not cfg.neva_model_file:
        raise ConfigError("set neva_model_file=PATH (checkpoint dir or .nemo) or engine_dir=PATH")
    ckpt = load_checkpoint(cfg.neva_model_file, precision=cfg.trainer.precision,
                           base_model_file=cfg.base_model_file, vision_tower=cfg.vision_tower)
    return pipeline_from_checkpoint(ckpt, cfg)
