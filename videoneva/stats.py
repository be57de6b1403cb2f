"""One summary-statistics record for every benchmark metric (latencies, throughputs, frames/s)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Stats:
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float
    std: float
    n: int
    unit: str = "s"

    @classmethod
    def of(cls, xs: list[float], unit: str = "s") -> "Stats":
        """Summary of samples xs (at least one)."""
        a = np.asarray(xs, dtype=float)
        if a.size == 0:
            raise ValueError("Stats.of needs at least one sample")
        return cls(mean=float(a.mean()), p50=float(np.median(a)), p90=float(np.percentile(a, 90)),
                   p99=float(np.percentile(a, 99)), min=float(a.min()), max=float(a.max()),
                   std=float(a.std()), n=int(a.size), unit=unit)
