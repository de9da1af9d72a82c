"""Robust summaries of step times."""

from __future__ import annotations

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
