"""Triton model `feature_cache`: visual features by media key, an LRU bounded in bytes (numpy only).

A request with `features` stores them (and `meta`) under `key`; one without looks `key` up. One
instance serves every `videoneva` instance; its counters are Triton custom metrics.
"""
from __future__ import annotations

import numpy as np

from videoneva.runtime.cache import FeatureCache
from videoneva.serving.tensors import Tensors, json_of, json_tensor, text_of

INPUTS = {"key": ("TYPE_STRING", [1]), "features": ("TYPE_FP32", [-1, -1]), "meta": ("TYPE_STRING", [1])}
OUTPUTS = {"found": ("TYPE_BOOL", [1]), "features": ("TYPE_FP32", [-1, -1]), "meta": ("TYPE_STRING", [1])}
DECOUPLED = False
METRICS = {"hits": "COUNTER", "misses": "COUNTER", "evictions": "COUNTER", "entries": "GAUGE", "bytes": "GAUGE"}
_EMPTY = np.zeros((0, 0), np.float32)


class FeatureCacheModel:
    def __init__(self, cache_bytes: int):
        self.cache = FeatureCache(cache_bytes)

    def __call__(self, inputs: Tensors, call=None) -> Tensors:
        key = text_of(inputs["key"], "key")
        if "features" in inputs:
            self.cache.put(key, inputs["features"], json_of(inputs.get("meta"), "meta") or {})
            return {"found": np.array([True]), "features": _EMPTY, "meta": json_tensor({})}
        hit = self.cache.get(key)
        if hit is None:
            return {"found": np.array([False]), "features": _EMPTY, "meta": json_tensor({})}
        return {"found": np.array([True]), "features": hit[0], "meta": json_tensor(hit[1])}

    def metrics(self) -> dict[str, tuple[str, int, str]]:
        """name → (kind, value, description) for Triton's metrics endpoint."""
        s = self.cache.stats
        return {f"videoneva_feature_cache_{k}" + ("_total" if kind == "COUNTER" else ""):
                (kind, int(getattr(s, k)), f"visual feature cache {k}") for k, kind in METRICS.items()}


def make(params: dict[str, str], bls=None) -> FeatureCacheModel:
    return FeatureCacheModel(int(params["cache_bytes"]))
