"""A bounded, thread-safe LRU cache of visual features keyed by media content hash + sampling settings.

It holds numpy arrays or torch tensors alike (sizes come from `.nbytes`) and imports neither, so the
Triton `feature_cache` model loads no deep-learning stack.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0
    max_bytes: int = 0


class FeatureCache:
    """LRU over (key → (features tensor, metadata)), bounded in bytes; max_bytes=0 disables it.

    A second question about the same video with the same sampling skips decode and encode.
    """

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = int(max_bytes)
        self._items: "OrderedDict[str, tuple[Any, Any]]" = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats(max_bytes=self.max_bytes)

    @staticmethod
    def _size(features: Any) -> int:
        return int(features.nbytes)

    def get(self, key: str) -> Optional[tuple[Any, Any]]:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.stats.misses += 1
                return None
            self._items.move_to_end(key)
            self.stats.hits += 1
            return item

    def put(self, key: str, features: Any, meta: Any = None) -> None:
        size = self._size(features)
        if size > self.max_bytes:
            return  # larger than the whole cache: never stored
        with self._lock:
            if key in self._items:
                self.stats.bytes -= self._size(self._items.pop(key)[0])
            self._items[key] = (features, meta)
            self.stats.bytes += size
            while self.stats.bytes > self.max_bytes:
                _, (old, _) = self._items.popitem(last=False)
                self.stats.bytes -= self._size(old)
                self.stats.evictions += 1
            self.stats.entries = len(self._items)
