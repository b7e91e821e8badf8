"""How long queued work takes to run: the batcher's own cost model — a fixed cost per
model call plus a cost per padded token — with both costs fitted to recent batches.

A least-squares line through (padded tokens, seconds) of recent batches, with
exponential forgetting, so the prediction follows the machine as it speeds up or
slows down (this one drifts ±20% from minute to minute). While the batches seen
are all of about one size the line's slope cannot be told from its intercept;
then the two are split in the ratio the batcher assumes (``overhead_tokens``).
One input of a few tokens and a full batch of a thousand differ by more than an
order of magnitude in cost per token, which is why a single rate (work per
second of the last batches) misjudges a queue that will run in other batch sizes.
"""

from __future__ import annotations

__all__ = ["DrainModel"]

# How much of the fit each new batch replaces: the fit reflects the last ~50 batches
# (a few seconds under load).
_FORGETTING = 0.02
# Sizes vary enough to fit a slope when their spread is this share of their mean.
_SPREAD = 0.25


class DrainModel:
    """Seconds per model call and per padded token, on one inference thread."""

    def __init__(self, overhead_tokens: int) -> None:
        self._overhead = overhead_tokens
        self._weight = 0.0
        self._x = self._y = self._xx = self._xy = 0.0
        self._padding = 1.0  # padded ÷ real tokens, smoothed the same way

    def record(self, padded_tokens: int, real_tokens: int, seconds: float) -> None:
        if seconds <= 0 or padded_tokens <= 0:
            return
        keep = 1.0 - _FORGETTING
        self._weight = self._weight * keep + 1.0
        self._x = self._x * keep + padded_tokens
        self._y = self._y * keep + seconds
        self._xx = self._xx * keep + padded_tokens * padded_tokens
        self._xy = self._xy * keep + padded_tokens * seconds
        sample = padded_tokens / max(1, real_tokens)
        self._padding += (_FORGETTING * 5) * (sample - self._padding)

    @property
    def measured(self) -> bool:
        return self._weight > 0

    def costs(self) -> tuple[float, float]:
        """(seconds per call, seconds per padded token) as fitted now."""
        mean_x = self._x / self._weight
        mean_y = self._y / self._weight
        variance = self._xx / self._weight - mean_x * mean_x
        if variance > (_SPREAD * mean_x) ** 2:
            slope = (self._xy / self._weight - mean_x * mean_y) / variance
            intercept = mean_y - slope * mean_x
            if slope > 0 and intercept >= 0:
                return intercept, slope
        per_token = mean_y / (mean_x + self._overhead)
        return per_token * self._overhead, per_token

    def seconds(self, tokens: float, calls: float) -> float:
        """Seconds for ``calls`` model calls over ``tokens`` real tokens in all (padding
        added as recently seen). Call only once ``measured``."""
        per_call, per_token = self.costs()
        return calls * per_call + tokens * self._padding * per_token
