"""The batching decision: queue state in, the next batch out. Pure, no threads.

The engine keeps queued inputs in arrival order and asks ``plan_batch`` which
of them to run next. The rules, in order:

1. **Fairness.** The oldest queued input is always in the batch, so every input
   is served after at most as many batches as there were inputs ahead of it;
   later arrivals can be grouped around it but never starve it.
2. **Limits.** At most ``max_batch_size`` inputs, and padded length × batch size
   at most ``max_batch_tokens`` (padding is real work for the model).
3. **Length grouping.** Among the oldest ``window`` inputs, the batch is the run
   of similar lengths around the oldest input that gives the best ratio of real
   tokens to work done, where work = ``overhead_tokens`` (the fixed cost of a
   model call) + padded tokens. Grouping lengths cuts padding; the overhead term
   keeps the batcher from splitting work into calls too small to be efficient.
4. **Prefetch only full batches.** While the model is busy, a batch may be
   prepared ahead only if it is already full; otherwise the decision waits for
   the model to free up, when more inputs will have arrived to group with.
   (Prefetching a part-full batch freezes its composition early: in a closed
   loop of clients it shrinks every later batch.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["BatchPlan", "BatchPolicy", "HasTokens", "plan_batch"]


class HasTokens(Protocol):
    """What the batcher needs to know of a queued input."""

    @property
    def n_tokens(self) -> int: ...


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_tokens: int
    max_batch_size: int
    overhead_tokens: int = 64
    # How far past the oldest input the batcher looks for similar lengths.
    window: int = 256

    def __post_init__(self) -> None:
        if self.max_batch_tokens < 1 or self.max_batch_size < 1 or self.window < 1:
            raise ValueError("batch limits and window must be positive")
        if self.overhead_tokens < 0:
            raise ValueError("overhead_tokens must not be negative")


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """Positions (in the queue's arrival order, ascending) of the inputs to run."""

    positions: tuple[int, ...]
    padded_length: int
    real_tokens: int

    @property
    def size(self) -> int:
        return len(self.positions)

    @property
    def padded_tokens(self) -> int:
        return self.padded_length * len(self.positions)


def plan_batch(
    queue: Sequence[HasTokens], policy: BatchPolicy, *, model_idle: bool = True
) -> BatchPlan | None:
    """Choose the next batch from ``queue`` (oldest first), or None to wait.

    An input longer than ``max_batch_tokens`` runs alone rather than never.
    """
    if not queue:
        return None
    window = min(len(queue), policy.window)
    lengths = np.fromiter((queue[i].n_tokens for i in range(window)), dtype=np.int64, count=window)
    # Stable sort: among equal lengths, older inputs come first.
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order]
    anchor = int(np.flatnonzero(order == 0)[0])
    first, last = _best_run(sorted_lengths, anchor, policy)
    positions = tuple(sorted(int(p) for p in order[first : last + 1]))
    plan = BatchPlan(
        positions=positions,
        padded_length=int(sorted_lengths[last]),
        real_tokens=int(sorted_lengths[first : last + 1].sum()),
    )
    if model_idle or _is_full(plan, policy):
        return plan
    return None


def _best_run(lengths: np.ndarray, anchor: int, policy: BatchPolicy) -> tuple[int, int]:
    """The run [first, last] of sorted lengths containing ``anchor`` with the best efficiency."""
    n = len(lengths)
    reach = policy.max_batch_size - 1  # no run is longer than a batch
    prefix = np.concatenate(([0], np.cumsum(lengths)))
    firsts = np.arange(max(0, anchor - reach), anchor + 1)[:, None]  # rows: where a run starts
    lasts = np.arange(anchor, min(n, anchor + reach + 1))[None, :]  # columns: where it ends
    sizes = lasts - firsts + 1
    padded = sizes * lengths[lasts]
    allowed = (sizes <= policy.max_batch_size) & (padded <= policy.max_batch_tokens)
    if not allowed.any():
        return anchor, anchor
    efficiency = (prefix[lasts + 1] - prefix[firsts]) / (policy.overhead_tokens + padded)
    efficiency = np.where(allowed, efficiency, -1.0)
    best = efficiency.max()
    # Among equally efficient runs, prefer the larger batch (fewer model calls).
    candidates = np.argwhere(efficiency >= best - 1e-12)
    row, col = max(candidates, key=lambda rc: int(sizes[rc[0], rc[1]]))
    return int(firsts[row, 0]), int(lasts[0, col])


def _is_full(plan: BatchPlan, policy: BatchPolicy) -> bool:
    """Full: no input could be added, by count or by token budget (any addition pads
    to at least the current length)."""
    if plan.size >= policy.max_batch_size:
        return True
    return (plan.size + 1) * plan.padded_length > policy.max_batch_tokens
