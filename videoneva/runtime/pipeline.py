"""The in-process pipeline: media → vision features → prompt + ids → LLM → clean response.

The same object backs `videoneva infer` and the Triton models, so preprocessing, prompt
rendering and postprocessing are written once.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from videoneva import prompts
from videoneva.errors import ConfigError, PromptError
from videoneva.generation import SamplingSettings, trim_at_end_strings
from videoneva.media import MediaSample, load_media, load_media_bytes, media_content_hash, media_hash
from videoneva.media.settings import MediaSettings
from videoneva.media.sources import MediaRoot
from videoneva.model.vision import tokens_per_frame
from videoneva.runtime.base import LanguageModel, TokenCallback, VisionEncoder, fake_media_ids
from videoneva.runtime.cache import FeatureCache

log = logging.getLogger(__name__)


@dataclass
class PipelineSettings:
    """Everything that shapes a prompt besides the request itself."""

    template: str
    media: MediaSettings
    image_token_len: int               # tokens per frame after pooling
    insert_media_token: Optional[str] = None
    add_bos: bool = False
    model_id: str = "videoneva"


@dataclass
class Request:
    text: str
    media_type: Optional[str] = None   # "video" | "image" | None (text only)
    media_path: Optional[str] = None   # relative to the media root
    media_bytes: Optional[bytes] = None


@dataclass
class Answer:
    prompt: str
    raw_response: str
    clean_response: str
    token_ids: list[int]
    finish_reason: str
    logprobs: Optional[list[float]] = None
    tokens: Optional[list[str]] = None
    media: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def resolve_image_token_len(image_size: int, patch_size: int, pool: int, explicit: Optional[int]) -> int:
    """Derive tokens per frame; an explicit data.image_token_len must agree with it."""
    derived = tokens_per_frame(image_size, patch_size, pool)
    if explicit is not None and explicit != derived:
        raise ConfigError(
            f"data.image_token_len={explicit} conflicts with the model: ({image_size} // {patch_size} "
            f"// pool {pool})^2 = {derived}; drop the key or set it to {derived}")
    return derived


class Pipeline:
    """Answer one request at a time with a VisionEncoder and a LanguageModel backend."""

    def __init__(self, vision: VisionEncoder, llm: LanguageModel, tokenizer, settings: PipelineSettings,
                 media_root: MediaRoot, cache: Optional[FeatureCache] = None):
        self.vision, self.llm, self.tokenizer, self.settings = vision, llm, tokenizer, settings
        self.media_root = media_root
        self.cache = cache if cache is not None else FeatureCache(0)
        self.stop_strings = prompts.stop_strings(settings.template)

    # -- media -----------------------------------------------------------------------------
    def media_settings(self, media_type: str) -> MediaSettings:
        return dataclasses.replace(self.settings.media, media_type=media_type)

    def features(self, req: Request) -> tuple[torch.Tensor, dict]:
        """Visual features [F·T, D] for the request's media, through the feature cache.

        The cache key (content hash + sampling settings) is computed before decoding, so a hit
        skips both decode and encode.
        """
        ms = self.media_settings(req.media_type or "image")
        t0 = time.perf_counter()
        if req.media_bytes is not None:
            key = media_content_hash(req.media_bytes, ms)
        else:
            key = media_hash(self.media_root, req.media_path, ms)
        hit = self.cache.get(key)
        if hit is not None:
            feats, meta = hit
            return feats, {**meta, "cache": "hit", "decode_s": 0.0, "encode_s": 0.0, "hash_s": time.perf_counter() - t0}
        if req.media_bytes is not None:
            sample: MediaSample = load_media_bytes(req.media_bytes, ms, name=req.media_path or "<bytes>")
        else:
            sample = load_media(self.media_root, req.media_path, ms)
        t1 = time.perf_counter()
        feats = self.vision.encode(sample.pixel_values)  # (F, T, D)
        feats = feats.reshape(-1, feats.shape[-1])       # (F·T, D)
        m = sample.meta
        meta = {"num_frames": int(sample.pixel_values.shape[0]), "frame_indices": [int(i) for i in m.indices],
                "num_total_frames": m.num_total_frames, "decoder": m.decoder, "codec": m.codec,
                "content_hash": sample.content_hash}
        self.cache.put(key, feats, meta)
        return feats, {**meta, "cache": "miss", "decode_s": t1 - t0, "encode_s": time.perf_counter() - t1}

    # -- prompt ----------------------------------------------------------------------------
    def render(self, req: Request) -> str:
        return prompts.render_prompt(self.settings.template, req.text, media_type=req.media_type,
                                     insert_media_token=self.settings.insert_media_token)

    def tokenize(self, prompt: str, num_media_rows: int) -> list[int]:
        """Prompt ids with media positions as fake ids vocab_size + k (TensorRT-LLM convention)."""
        # Any in-vocabulary id stands in for the media rows here; they become fake ids below. The
        # model's own image token is used (a NeMo tokenizer may have no "<image>" token at all).
        tp = prompts.tokenize_with_media(self.tokenizer, prompt, num_media_rows, self.llm.image_token_id,
                                         add_bos=self.settings.add_bos)
        return fake_media_ids(tp.input_ids, tp.media_positions, self.llm.vocab_size)

    # -- one request -----------------------------------------------------------------------
    def answer(self, req: Request, sampling: SamplingSettings, on_token: Optional[TokenCallback] = None) -> Answer:
        """Run one request end to end. Raises VideoNevaError subclasses for bad input."""
        t0 = time.perf_counter()
        table, media_meta = None, {}
        if req.media_type is not None:
            table, media_meta = self.features(req)
        prompt = self.render(req)
        ids = self.tokenize(prompt, 0 if table is None else table.shape[0])
        room = self.llm.max_context - len(ids)
        if room < 1:
            n_media = 0 if table is None else table.shape[0]
            raise PromptError(
                f"prompt is {len(ids)} tokens ({n_media} of them media positions) but the model's context "
                f"is {self.llm.max_context}; shorten the text or use fewer frames (data.num_frames) or "
                "data.frame_token_pool")
        if room < sampling.tokens_to_generate:
            sampling = dataclasses.replace(sampling, tokens_to_generate=room,
                                           min_tokens_to_generate=min(sampling.min_tokens_to_generate, room))
        t1 = time.perf_counter()
        out = self.llm.generate(ids, table, sampling, on_token=on_token)
        raw = self.tokenizer.decode(out.token_ids, skip_special_tokens=False)
        raw, _ = trim_at_end_strings(raw, sampling.end_strings)
        clean = prompts.clean_response(self.settings.template, raw)
        tokens = None
        if out.logprobs is not None:
            tokens = [self.tokenizer.decode([t], skip_special_tokens=False) for t in out.token_ids]
        timings = {"media_s": t1 - t0, **out.timings, "total_s": time.perf_counter() - t0,
                   "prompt_tokens": len(ids), "output_tokens": len(out.token_ids)}
        return Answer(prompt, raw, clean, out.token_ids, out.finish_reason, out.logprobs, tokens, media_meta, timings)
