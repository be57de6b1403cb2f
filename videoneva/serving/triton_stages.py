"""The request Flow's stages as BLS calls to the other Triton models (the `videoneva` entry model's).

`bls` is anything with `call(model, tensors) -> tensors` and `stream(model, tensors, barrier)`
yielding a decoupled model's responses: the python backend's BLS inside Triton
(videoneva/serving/triton_model.py), or the handlers themselves in one process (tests).
"""
from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Callable, Optional

import numpy as np

from videoneva.media.settings import MediaSettings
from videoneva.runtime.base import GenerationOutput
from videoneva.runtime.flow import Decoded, IdsCallback
from videoneva.schema import Request, RequestError, SamplingSettings
from videoneva.serving.models.llm import sampling_tensor
from videoneva.serving.tensors import json_of, json_tensor, string_tensor, text_of


class TritonStages:
    """Stages over BLS.

    Args:
        bls: the BLS calls (see the module docstring).
        has_cache: whether the `feature_cache` model is consulted.
        cancelled: () -> bool, whether the client has given up on the request (asked at most every
            CANCEL_CHECK_S while the llm generates; then the llm is told to drop the request).
    """

    CANCEL_CHECK_S = 0.05

    def __init__(self, bls, has_cache: bool, cancelled: Callable[[], bool] = lambda: False):
        self.bls, self.has_cache, self.cancelled = bls, has_cache, cancelled

    def barrier(self) -> bool:
        """A round trip through the stub, made before a finished stream is let go (TritonBLS.stream).

        The request's is_cancelled() goes through the stub's message queue, except once the request
        is known cancelled: then it answers at once, so False (no round trip made)."""
        return not self.cancelled()

    def cache_get(self, key: str) -> Optional[tuple[Any, dict]]:
        out = self.bls.call("feature_cache", {"key": string_tensor(key)})
        if not bool(out["found"].reshape(-1)[0]):
            return None
        return out["features"], json_of(out["meta"], "meta")

    def cache_put(self, key: str, features: Any, meta: dict) -> None:
        self.bls.call("feature_cache", {"key": string_tensor(key), "features": np.ascontiguousarray(features, np.float32),
                                        "meta": json_tensor(meta)})

    def decode(self, req: Request, settings: MediaSettings, source: Any) -> Decoded:
        tensors = {"media_settings": json_tensor(dataclasses.asdict(settings))}
        if req.media_bytes is not None:
            tensors["media_bytes_input"] = np.frombuffer(req.media_bytes, np.uint8)
        else:  # preprocess reads the file under its own (the same) media root
            tensors["media_path"] = string_tensor(req.media_path)
        out = self.bls.call("preprocess", tensors)
        return Decoded(out["pixel_values"], json_of(out["media_meta"], "media_meta"))

    def encode(self, pixel_values: Any) -> Any:
        return self.bls.call("vision_encoder", {"pixel_values": pixel_values})["features"]

    def generate(self, ids: list[int], table: Any, sampling: SamplingSettings, on_ids: Optional[IdsCallback],
                 media_key: Optional[str] = None) -> GenerationOutput:
        key = uuid.uuid4().hex
        tensors = {"input_ids": np.asarray(ids, np.int32), "sampling": sampling_tensor(sampling),
                   "streaming": np.array([on_ids is not None]), "request_key": string_tensor(key)}
        if table is not None:
            tensors["prompt_embedding_table"] = np.ascontiguousarray(table, np.float32)
        if media_key is not None:
            tensors["media_key"] = string_tensor(media_key)
        final, checked = None, time.monotonic()
        for resp in self.bls.stream("llm", tensors, self.barrier):
            if "finish_reason" in resp:
                final = resp
                continue
            if on_ids is not None:
                on_ids([int(i) for i in resp["output_ids"].reshape(-1)])
            if time.monotonic() - checked >= self.CANCEL_CHECK_S:
                checked = time.monotonic()
                if self.cancelled():
                    for _ in self.bls.stream("llm", {"cancel_key": string_tensor(key)}, self.barrier):
                        pass
                    raise RequestError("the client cancelled the request")
        if final is None:
            raise RuntimeError("the llm model ended its response stream without a final response")
        logprobs = [float(x) for x in final["output_log_probs"].reshape(-1)] if sampling.return_log_probs else None
        return GenerationOutput([int(i) for i in final["output_ids"].reshape(-1)],
                                text_of(final["finish_reason"], "finish_reason"), logprobs)
