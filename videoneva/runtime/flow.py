"""One request's order of steps, written once: cache → media → prompt → fit → generate → text.

    Flow.answer(request, sampling)                     the order, on typed values
      ├─ Front                                         weight-free: media settings and source,
      │                                                prompt ids, sampling fit, detokenizing
      └─ Stages                                        the model work, two implementations:
           LocalStages  (this module)                  in-process backends (`videoneva infer`)
           TritonStages (videoneva/serving/triton_stages.py)  BLS calls to the Triton models

Media bytes are hashed once (the feature-cache key is built from that digest and the sampling
settings); a cache hit skips decode and encode; streamed text is detokenized incrementally here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from videoneva.media import decode_media, key_for_digest, media_report, source_digest
from videoneva.media.settings import MediaSettings
from videoneva.runtime.base import GenerationOutput
from videoneva.runtime.detok import IncrementalDetokenizer
from videoneva.runtime.front import Front
from videoneva.schema import MEDIA_NOT_CACHED, Answer, Delta, Request, RequestError, SamplingSettings

IdsCallback = Callable[[list[int]], None]


@dataclass
class Decoded:
    """Preprocessed frames of one media item and what the decoder reports about them."""

    pixel_values: Any          # float32 [F, 3, H, W]
    meta: dict                 # num_frames, frame_indices, num_total_frames, decoder, codec


@dataclass
class MediaFeatures:
    """The prompt table of one media item and its report (Answer.media)."""

    table: Any                 # [F·T, D] numpy or torch
    meta: dict
    timings: dict = field(default_factory=dict)


class Stages(Protocol):
    """The model work of a request; the Flow decides the order."""

    has_cache: bool

    def cache_get(self, key: str) -> Optional[tuple[Any, dict]]:
        """(features [F·T, D], meta) stored under key, or None."""

    def cache_put(self, key: str, features: Any, meta: dict) -> None:
        """Store features under key."""

    def decode(self, req: Request, settings: MediaSettings, source: Any) -> Decoded:
        """Decode the sampled frames of the request's media (source: its bytes or file) and preprocess them."""

    def encode(self, pixel_values: Any) -> Any:
        """Frames [F, 3, H, W] → features [F, T, D]."""

    def generate(self, ids: list[int], table: Any, sampling: SamplingSettings, on_ids: Optional[IdsCallback],
                 media_key: Optional[str] = None) -> GenerationOutput:
        """Token ids after the prompt; on_ids (when given) gets the ids as they are produced.
        media_key (the media's content hash) lets an LLM reuse cached blocks of the same media."""


class Flow:
    """Answer requests with a Front and a stage set.

    Args:
        front: the model's weight-free steps.
        stages: LocalStages or TritonStages.
    """

    def __init__(self, front: Front, stages: Stages):
        self.front, self.stages = front, stages

    def features(self, req: Request) -> MediaFeatures:
        """The prompt table of the request's media: from the cache, or decoded and encoded (then cached)."""
        ms = self.front.media_settings(req)
        t0 = time.perf_counter()
        source, key = None, None
        if req.media_bytes is None and req.media_path is None:  # a digest alone: the cache must hold it
            if not self.stages.has_cache:
                raise RequestError(f"{MEDIA_NOT_CACHED}: media_digest {req.media_digest} came without the media and "
                                   "this server has no feature cache; send media_bytes_input")
            key = key_for_digest(req.media_digest, ms)
        else:
            source = self.front.media_source(req, ms)
            if self.stages.has_cache or req.media_digest is not None:
                digest = source_digest(source)
                if req.media_digest is not None and req.media_digest != digest:
                    raise RequestError("input 'media_digest' is not the sha256 of media_bytes_input")
                key = key_for_digest(digest, ms)
        hit = self.stages.cache_get(key) if key is not None and self.stages.has_cache else None
        if hit is not None:
            return MediaFeatures(hit[0], {**hit[1], "cache": "hit"}, {"decode_s": None, "encode_s": None})
        if source is None:
            raise RequestError(f"{MEDIA_NOT_CACHED}: media_digest {req.media_digest} came without the media and "
                               "its features are not in the cache; send media_bytes_input")
        decoded = self.stages.decode(req, ms, source)
        t1 = time.perf_counter()
        feats = self.stages.encode(decoded.pixel_values)
        table = feats.reshape(-1, feats.shape[-1])  # (F·T, D)
        t2 = time.perf_counter()
        meta = {**decoded.meta, "content_hash": key if self.stages.has_cache else None}
        if self.stages.has_cache:
            self.stages.cache_put(key, table, meta)
        return MediaFeatures(table, {**meta, "cache": "miss" if self.stages.has_cache else "off"},
                             {"decode_s": t1 - t0, "encode_s": t2 - t1})

    def answer(self, req: Request, sampling: SamplingSettings,
               on_delta: Optional[Callable[[Delta], None]] = None) -> Answer:
        """Answer one request; on_delta (when given) gets the text as it is generated.

        Raises VideoNevaError subclasses (RequestError, MediaError, PromptError) for bad input.
        """
        t0 = time.perf_counter()
        media = MediaFeatures(None, {}, {"decode_s": None, "encode_s": None})
        if req.media_type is not None:
            media = self.features(req)
        rows = 0 if media.table is None else int(media.table.shape[0])
        prompt, ids = self.front.prompt_ids(req, rows)
        sampling = self.front.sampling(sampling, len(ids))
        t_llm = time.perf_counter()
        detok = IncrementalDetokenizer(self.front.tokenizer, sampling.end_strings)
        first: list[float] = []
        pending: list[int] = []

        def on_ids(new: list[int]) -> None:
            if not first:
                first.append(time.perf_counter() - t0)
            pending.extend(new)
            text = detok.push(new)
            if text:
                on_delta(Delta(text, list(pending)))
                pending.clear()

        out = self.stages.generate(ids, media.table, sampling, on_ids if on_delta is not None else None,
                                   media.meta.get("content_hash"))
        raw, clean = self.front.detokenize(out.token_ids, sampling.end_strings)
        if on_delta is not None:
            rest = detok.finish(raw)
            if rest or pending:
                on_delta(Delta(rest or "", list(pending)))
        now = time.perf_counter()
        return Answer(
            prompt=prompt, raw_response=raw, clean_response=clean, token_ids=out.token_ids,
            finish_reason=out.finish_reason, logprobs=out.logprobs,
            tokens=self.front.token_texts(out.token_ids) if out.logprobs is not None else None, media=media.meta,
            usage={"prompt_tokens": len(ids), "media_tokens": rows, "completion_tokens": len(out.token_ids)},
            timings={**media.timings, "media_s": t_llm - t0, "first_token_s": first[0] if first else None,
                     "generate_s": now - t_llm, "total_s": now - t0},
            model_id=self.front.settings.model_id)


class LocalStages:
    """The stages in this process: a VisionEncoder, a LanguageModel and a FeatureCache.

    Args:
        vision: frames → features (ONNX Runtime, TensorRT or torch).
        llm: ids + prompt table → tokens (torch, ONNX Runtime or TensorRT-LLM).
        cache: the feature cache; None or a zero-size cache turns lookups off.
    """

    def __init__(self, vision, llm, cache=None):
        self.vision, self.llm, self.cache = vision, llm, cache
        self.has_cache = cache is not None and cache.max_bytes > 0

    def cache_get(self, key: str):
        return self.cache.get(key)

    def cache_put(self, key: str, features, meta: dict) -> None:
        self.cache.put(key, features, meta)

    def decode(self, req: Request, settings: MediaSettings, source) -> Decoded:
        sample = decode_media(source, settings, req.media_path or "<bytes>")
        return Decoded(sample.pixel_values, media_report(sample))

    def encode(self, pixel_values):
        return self.vision.encode(pixel_values)

    def generate(self, ids, table, sampling, on_ids, media_key=None):
        import torch

        prompt_table = None if table is None else torch.as_tensor(table)
        on_token = None if on_ids is None else (lambda tid: on_ids([tid]))
        if media_key is not None and hasattr(self.llm, "submit"):  # an executor: it reuses the media's prefix
            return self.llm.generate(ids, prompt_table, sampling, on_token=on_token, media_key=media_key)
        return self.llm.generate(ids, prompt_table, sampling, on_token=on_token)
