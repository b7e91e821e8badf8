"""Counting helpers behind every ``statistics()``: cumulative histograms and rates."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Histogram", "HistogramSnapshot", "RateEstimator"]


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram at one moment: ``counts[i]`` observations fell at or below ``bounds[i]``
    and above ``bounds[i-1]``; the last count is for values above every bound."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float
    count: int

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


class Histogram:
    """Fixed-bucket histogram. Not locked: each owner updates it from one thread."""

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(bounds):
            raise ValueError("histogram bounds must be sorted")
        self._bounds = tuple(float(b) for b in bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._total = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._total += value
        self._count += 1

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self._bounds, tuple(self._counts), self._total, self._count)

    def __repr__(self) -> str:
        return f"<Histogram count={self._count} mean={self.snapshot().mean:.4g}>"


class RateEstimator:
    """Smoothed work rate (units per second of busy time), for Retry-After estimates."""

    def __init__(self, smoothing: float = 0.2) -> None:
        self._smoothing = smoothing
        self._rate: float | None = None

    def record(self, units: float, seconds: float) -> None:
        if seconds <= 0 or units <= 0:
            return
        sample = units / seconds
        if self._rate is None:
            self._rate = sample
        else:
            self._rate += self._smoothing * (sample - self._rate)

    @property
    def rate(self) -> float | None:
        return self._rate
