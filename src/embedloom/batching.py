"""The batching decision: queue state in, the next batch out. Pure, no threads.

The engine keeps queued inputs in arrival order and asks ``plan_batch`` which
of them to run next. The rules, in order:

1. **Fairness.** The oldest queued input is always in the batch, so every input
   is served after at most as many batches as there were inputs ahead of it;
   later arrivals can be grouped around it but never starve it.
2. **Limits.** At most ``max_batch_size`` inputs, and padded length × batch size
   at most ``max_batch_tokens`` (padding is real work for the model).
3. **Length grouping.** The oldest ``window`` inputs, sorted by length, are split
   into the runs that would process all of them with the least work, where one
   run costs ``overhead_tokens`` (the fixed cost of a model call) + its padded
   tokens; the batch is the run holding the oldest input. Grouping lengths cuts
   padding; the overhead term keeps the split from making calls too small to be
   efficient; planning for the whole window (not just the next batch) keeps the
   first batch from taking a tight cluster and leaving a costly remainder.
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

    @property
    def owner(self) -> object:
        """The request the input belongs to."""
        ...


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_tokens: int
    max_batch_size: int
    overhead_tokens: int = 64
    # How many of the oldest inputs are planned together. Two batches' worth is
    # enough to group lengths well; more only costs planning time on the loop.
    window: int = 64
    # The ``locked`` strategy: no batching across requests; each batch holds the
    # oldest request's inputs only (split by the limits), and goes to a free
    # request thread whether or not the model is busy, as thread-per-request does.
    one_request_per_batch: bool = False

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
    if policy.one_request_per_batch:
        return _oldest_request_alone(queue, policy)
    window = min(len(queue), policy.window)
    lengths = np.fromiter((queue[i].n_tokens for i in range(window)), dtype=np.int64, count=window)
    # Stable sort: among equal lengths, older inputs come first.
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order]
    anchor = int(np.flatnonzero(order == 0)[0])
    first, last = next(
        (first, last)
        for first, last in _cheapest_partition(sorted_lengths.tolist(), policy)
        if first <= anchor <= last
    )
    positions = tuple(sorted(int(p) for p in order[first : last + 1]))
    plan = BatchPlan(
        positions=positions,
        padded_length=int(sorted_lengths[last]),
        real_tokens=int(sorted_lengths[first : last + 1].sum()),
    )
    if model_idle or _is_full(plan, policy):
        return plan
    return None


def _cheapest_partition(lengths: Sequence[int], policy: BatchPolicy) -> list[tuple[int, int]]:
    """Split sorted ``lengths`` into runs [first, last] that cost the least work in all.

    Dynamic programming from the end: ``best[i]`` is the cheapest way to run
    ``lengths[i:]``; a run [i, j) costs overhead + its size × its longest length.
    Among equally cheap splits, earlier runs are made as large as possible.
    """
    count = len(lengths)
    best = [float("inf")] * count + [0.0]
    run_end = [count] * (count + 1)
    for first in range(count - 1, -1, -1):
        for end in range(min(count, first + policy.max_batch_size), first, -1):
            longest = lengths[end - 1]
            size = end - first
            if size > 1 and size * longest > policy.max_batch_tokens:
                continue
            cost = policy.overhead_tokens + size * longest + best[end]
            if cost < best[first]:
                best[first] = cost
                run_end[first] = end
    runs = []
    first = 0
    while first < count:
        runs.append((first, run_end[first] - 1))
        first = run_end[first]
    return runs


def _oldest_request_alone(queue: Sequence[HasTokens], policy: BatchPolicy) -> BatchPlan:
    owner = queue[0].owner
    positions: list[int] = []
    longest = 0
    for position in range(min(len(queue), policy.window)):
        item = queue[position]
        if item.owner is not owner:
            continue
        widest = max(longest, item.n_tokens)
        if positions and (
            len(positions) + 1 > policy.max_batch_size
            or (len(positions) + 1) * widest > policy.max_batch_tokens
        ):
            break
        positions.append(position)
        longest = widest
    return BatchPlan(
        positions=tuple(positions),
        padded_length=longest,
        real_tokens=sum(queue[p].n_tokens for p in positions),
    )


def _is_full(plan: BatchPlan, policy: BatchPolicy) -> bool:
    """Full: no input could be added, by count or by token budget (any addition pads
    to at least the current length)."""
    if plan.size >= policy.max_batch_size:
        return True
    return (plan.size + 1) * plan.padded_length > policy.max_batch_tokens
