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
from videoneva.media import MediaSample, key_for_digest, load_media, load_media_bytes, media_content_hash, media_hash
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
    insert_media_token: Optional[str] = None  # left | right | none; None: the pipeline's setting


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
    model_id: Optional[str] = None     # set when the answer came from a server


def resolve_image_token_len(image_size: int, patch_size: int, pool: int, explicit: Optional[int]) -> int:
    """Derive tokens per frame; an explicit data.image_token_len must agree with it."""
    derived = tokens_per_frame(image_size, patch_size, pool)
    if explicit is not None and explicit != derived:
        raise ConfigError(
            f"data.image_token_len={explicit} conflicts with the model: ({image_size} // {patch_size} "
            f"// pool {pool})^2 = {derived}; drop the key or set it to {derived}")
    return derived


@dataclass
class Front:
    """The weight-free stages around the models: media key and decode, prompt ids, detokenizing.

    The in-process Pipeline and the Triton `preprocess` / `postprocess` / `videoneva` models all
    use this one object, so a request is prepared and finished the same way everywhere.
    """

    settings: PipelineSettings
    tokenizer: Any
    media_root: MediaRoot
    vocab_size: int            # the LLM's; media positions get ids vocab_size + k
    image_token_id: int        # an in-vocabulary id standing in for media rows while tokenizing
    max_context: int

    def media_settings(self, media_type: str) -> MediaSettings:
        return dataclasses.replace(self.settings.media, media_type=media_type)

    def media_key(self, req: Request) -> str:
        """Feature-cache key: content hash of the media + the sampling settings (no decoding)."""
        ms = self.media_settings(req.media_type or "image")
        if req.media_bytes is not None:
            return media_content_hash(req.media_bytes, ms)
        return media_hash(self.media_root, req.media_path, ms)

    def media_key_for_digest(self, digest: str, media_type: str) -> str:
        """The feature-cache key of a file known only by its media_digest (sha256 hex of the file)."""
        return key_for_digest(digest, self.media_settings(media_type))

    def decode(self, req: Request) -> MediaSample:
        """Decode the sampled frames and CLIP-preprocess them (MediaError on bad media)."""
        ms = self.media_settings(req.media_type or "image")
        if req.media_bytes is not None:
            return load_media_bytes(req.media_bytes, ms, name=req.media_path or "<bytes>")
        return load_media(self.media_root, req.media_path, ms)

    def render(self, req: Request) -> str:
        where = self.settings.insert_media_token if req.insert_media_token is None else req.insert_media_token
        return prompts.render_prompt(self.settings.template, req.text, media_type=req.media_type,
                                     insert_media_token=None if where == "none" else where)

    def tokenize(self, prompt: str, num_media_rows: int) -> list[int]:
        """Prompt ids with media positions as fake ids vocab_size + k (TensorRT-LLM convention)."""
        # Any in-vocabulary id stands in for the media rows here; they become fake ids below. The
        # model's own image token is used (a NeMo tokenizer may have no "<image>" token at all).
        tp = prompts.tokenize_with_media(self.tokenizer, prompt, num_media_rows, self.image_token_id,
                                         add_bos=self.settings.add_bos)
        return fake_media_ids(tp.input_ids, tp.media_positions, self.vocab_size)

    def prompt_ids(self, req: Request, num_media_rows: int) -> tuple[str, list[int]]:
        """(prompt, ids) for the request; PromptError when the prompt leaves no room to answer."""
        prompt = self.render(req)
        ids = self.tokenize(prompt, num_media_rows)
        if self.max_context - len(ids) < 1:
            raise PromptError(
                f"prompt is {len(ids)} tokens ({num_media_rows} of them media positions) but the model's context "
                f"is {self.max_context}; shorten the text or use fewer frames (data.num_frames) or "
                "data.frame_token_pool")
        return prompt, ids

    def fit_sampling(self, num_prompt_ids: int, sampling: SamplingSettings) -> SamplingSettings:
        """Sampling with tokens_to_generate cut to the room left in the context."""
        room = self.max_context - num_prompt_ids
        if room < sampling.tokens_to_generate:
            return dataclasses.replace(sampling, tokens_to_generate=room,
                                       min_tokens_to_generate=min(sampling.min_tokens_to_generate, room))
        return sampling

    def detokenize(self, token_ids: list[int], end_strings: list[str]) -> tuple[str, str, bool]:
        """(raw response cut at the first end string, clean response, whether an end string was hit)."""
        raw = self.tokenizer.decode(token_ids, skip_special_tokens=False)
        raw, hit = trim_at_end_strings(raw, end_strings)
        return raw, prompts.clean_response(self.settings.template, raw), hit is not None

    def token_texts(self, token_ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([t], skip_special_tokens=False) for t in token_ids]


def media_meta(sample: MediaSample) -> dict:
    """What an answer reports about its media (JSON-ready)."""
    m = sample.meta
    return {"num_frames": int(sample.pixel_values.shape[0]), "frame_indices": [int(i) for i in m.indices],
            "num_total_frames": m.num_total_frames, "decoder": m.decoder, "codec": m.codec,
            "content_hash": sample.content_hash}


class Pipeline:
    """Answer one request at a time with a VisionEncoder and a LanguageModel backend."""

    def __init__(self, vision: VisionEncoder, llm: LanguageModel, tokenizer, settings: PipelineSettings,
                 media_root: MediaRoot, cache: Optional[FeatureCache] = None):
        self.vision, self.llm, self.tokenizer, self.settings = vision, llm, tokenizer, settings
        self.media_root = media_root
        self.front = Front(settings, tokenizer, media_root, llm.vocab_size, llm.image_token_id, llm.max_context)
        self.cache = cache if cache is not None else FeatureCache(0)
        self.stop_strings = prompts.stop_strings(settings.template)

    def media_settings(self, media_type: str) -> MediaSettings:
        return self.front.media_settings(media_type)

    def render(self, req: Request) -> str:
        return self.front.render(req)

    def tokenize(self, prompt: str, num_media_rows: int) -> list[int]:
        return self.front.tokenize(prompt, num_media_rows)

    def features(self, req: Request) -> tuple[torch.Tensor, dict]:
        """Visual features [F·T, D] for the request's media, through the feature cache.

        The cache key (content hash + sampling settings) is computed before decoding, so a hit
        skips both decode and encode.
        """
        t0 = time.perf_counter()
        key = self.front.media_key(req)
        hit = self.cache.get(key)
        if hit is not None:
            feats, meta = hit
            return feats, {**meta, "cache": "hit", "decode_s": 0.0, "encode_s": 0.0, "hash_s": time.perf_counter() - t0}
        sample = self.front.decode(req)
        t1 = time.perf_counter()
        feats = self.vision.encode(sample.pixel_values)  # (F, T, D)
        feats = feats.reshape(-1, feats.shape[-1])       # (F·T, D)
        meta = media_meta(sample)
        self.cache.put(key, feats, meta)
        return feats, {**meta, "cache": "miss", "decode_s": t1 - t0, "encode_s": time.perf_counter() - t1}

    def answer(self, req: Request, sampling: SamplingSettings, on_token: Optional[TokenCallback] = None) -> Answer:
        """Run one request end to end. Raises VideoNevaError subclasses for bad input."""
        t0 = time.perf_counter()
        table, media = None, {}
        if req.media_type is not None:
            table, media = self.features(req)
        prompt, ids = self.front.prompt_ids(req, 0 if table is None else table.shape[0])
        sampling = self.front.fit_sampling(len(ids), sampling)
        t1 = time.perf_counter()
        out = self.llm.generate(ids, table, sampling, on_token=on_token)
        raw, clean, _ = self.front.detokenize(out.token_ids, sampling.end_strings)
        tokens = self.front.token_texts(out.token_ids) if out.logprobs is not None else None
        timings = {"media_s": t1 - t0, **out.timings, "total_s": time.perf_counter() - t0,
                   "prompt_tokens": len(ids), "output_tokens": len(out.token_ids)}
        return Answer(prompt, raw, clean, out.token_ids, out.finish_reason, out.logprobs, tokens, media, timings)
