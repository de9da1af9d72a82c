"""Robust summaries of step times."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TimeStats:
    count: int
    median_ms: float
    iqr_ms: float  # 75th minus 25th percentile
    mean_ms: float
    min_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> TimeStats | None:
        """Statistics of per-step times in seconds; None when there are none."""
        if not seconds:
            return None
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        q25, q50, q75 = np.percentile(ms, [25, 50, 75])
        return cls(len(ms), float(q50), float(q75 - q25), float(ms.mean()), float(ms.min()))


def best_time(
    work: Callable[[], object], sync: Callable[[], None], warmup: int = 2, repeats: int = 5
) -> float:
    """Seconds of the fastest of a few calls, the device synchronised around each.

    For micro-benchmarks of a peak (a matrix product), where the fastest call
    is the one least disturbed by the rest of the machine.
    """
    for _ in range(warmup):
        work()
    sync()
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        sync()
        best = min(best, time.perf_counter() - began)
    return best
