"""The batching decision: queue state in, the next batch out. Pure, no threads.

The engine hands ``plan_batch`` its queued inputs in the order it would serve
them (``engine.fairness``: fair shares between tenants and requests, or arrival
order) and asks which of them to run next. The rules, in order:

0. **Deadlines.** An input whose deadline has passed is never planned into a
   batch: its position is reported in ``expired`` for the engine to fail.
   **Tasks.** A batch holds one task (pooled vectors, or per-token ones): the
   most urgent input's; the others wait for a batch of their own.
1. **Fairness and priority.** Inputs are ranked by priority class (high,
   normal, low), then by the order given; the most urgent input is always in
   the batch, and later ones can be grouped around it but never starve it.
   Ageing: every ``ageing_seconds`` a request waits without progress (since it
   was queued or last had an input taken) raises its inputs one class, so low
   priority still progresses under a sustained stream of high: an input waits
   at most about two periods before it ranks with fresh high work. Counted from
   progress, not arrival, so a long request served its fair share all along
   does not jump ahead of its own class. With one class only, the order given
   is kept: its first input is always in the batch.
2. **Limits.** At most ``max_batch_size`` inputs, and padded length × batch size
   at most ``max_batch_tokens`` (padding is real work for the model).
3. **Length grouping.** The first ``window`` inputs, sorted by length, are split
   into the runs that would process all of them with the least work, where one
   run costs ``overhead_tokens`` (the fixed cost of a model call) + its padded
   tokens; the batch is the run holding the most urgent input. Grouping lengths cuts
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

__all__ = ["NORMAL_PRIORITY", "BatchPlan", "BatchPolicy", "HasTokens", "plan_batch"]


class HasTokens(Protocol):
    """What the batcher needs to know of a queued input."""

    @property
    def n_tokens(self) -> int: ...

    @property
    def owner(self) -> object:
        """The request the input belongs to."""
        ...

    @property
    def waiting_since(self) -> float:
        """Since when its request has waited without progress (ageing's measure)."""
        ...

    @property
    def deadline(self) -> float | None:
        """When the input stops being worth running (None: never)."""
        ...

    @property
    def priority_class(self) -> int:
        """0 high, 1 normal, 2 low."""
        ...

    @property
    def task(self) -> str:
        """What the model is asked for it; a batch holds one task."""
        ...


NORMAL_PRIORITY = 1


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_tokens: int
    max_batch_size: int
    overhead_tokens: int = 64
    # How many of the first inputs are planned together. Two batches' worth is
    # enough to group lengths well; more only costs planning time on the loop.
    window: int = 64
    # The ``locked`` strategy: no batching across requests; each batch holds the
    # oldest request's inputs only (split by the limits), and goes to a free
    # request thread whether or not the model is busy, as thread-per-request does.
    one_request_per_batch: bool = False
    # Waiting this long raises an input one priority class.
    ageing_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.max_batch_tokens < 1 or self.max_batch_size < 1 or self.window < 1:
            raise ValueError("batch limits and window must be positive")
        if self.overhead_tokens < 0:
            raise ValueError("overhead_tokens must not be negative")
        if self.ageing_seconds <= 0:
            raise ValueError("ageing_seconds must be positive")


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """Positions (in the queue as given, ascending) of the inputs to run."""

    positions: tuple[int, ...]
    padded_length: int
    real_tokens: int
    # Inputs past their deadline, for the engine to fail; never in ``positions``.
    expired: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        return len(self.positions)

    @property
    def padded_tokens(self) -> int:
        return self.padded_length * len(self.positions)


def plan_batch(
    queue: Sequence[HasTokens],
    policy: BatchPolicy,
    *,
    model_idle: bool = True,
    now: float = 0.0,
) -> BatchPlan | None:
    """Choose the next batch from ``queue`` (in service order), or None to wait.

    ``now`` is the engine's clock, for deadlines and ageing. A plan may hold
    only ``expired`` inputs (no positions) when nothing else is queued. An
    input longer than ``max_batch_tokens`` runs alone rather than never.
    """
    if not queue:
        return None
    expired = tuple(
        i for i, item in enumerate(queue) if item.deadline is not None and item.deadline <= now
    )
    order = _urgency_order(queue, policy, now, set(expired))
    if not order:
        return BatchPlan((), 0, 0, expired)
    task = queue[order[0]].task
    if any(queue[i].task != task for i in order):
        order = [i for i in order if queue[i].task == task]
    if policy.one_request_per_batch:
        return _oldest_request_alone(queue, order, policy, expired)
    window = order[: policy.window]
    lengths = np.fromiter((queue[i].n_tokens for i in window), dtype=np.int64, count=len(window))
    # Stable sort: among equal lengths, the more urgent come first.
    by_length = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[by_length]
    anchor = int(np.flatnonzero(by_length == 0)[0])
    first, last = next(
        (first, last)
        for first, last in _cheapest_partition(sorted_lengths.tolist(), policy)
        if first <= anchor <= last
    )
    positions = tuple(sorted(window[int(k)] for k in by_length[first : last + 1]))
    plan = BatchPlan(
        positions=positions,
        padded_length=int(sorted_lengths[last]),
        real_tokens=int(sorted_lengths[first : last + 1].sum()),
        expired=expired,
    )
    if model_idle or _is_full(plan, policy) or expired:
        return plan
    return None


def _urgency_order(
    queue: Sequence[HasTokens], policy: BatchPolicy, now: float, expired: set[int]
) -> list[int]:
    """Positions of the live inputs, most urgent first: by priority class raised one
    step per ``ageing_seconds`` waited, then by the order given."""
    live = [i for i in range(len(queue)) if i not in expired] if expired else range(len(queue))
    if all(queue[i].priority_class == NORMAL_PRIORITY for i in live):
        return list(live)  # one class: the order given, no sorting

    def urgency(position: int) -> tuple[float, float, int]:
        item = queue[position]
        aged = (now - item.waiting_since) // policy.ageing_seconds
        # Lifted to the same rank as another class's input, the longer waiter goes first.
        return (item.priority_class - aged, -aged, position)

    return sorted(live, key=urgency)


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


def _oldest_request_alone(
    queue: Sequence[HasTokens], order: Sequence[int], policy: BatchPolicy, expired: tuple[int, ...]
) -> BatchPlan:
    owner = queue[order[0]].owner
    positions: list[int] = []
    longest = 0
    for position in order[: policy.window]:
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
        positions=tuple(sorted(positions)),
        padded_length=longest,
        real_tokens=sum(queue[p].n_tokens for p in positions),
        expired=expired,
    )


def _is_full(plan: BatchPlan, policy: BatchPolicy) -> bool:
    """Full: no input could be added, by count or by token budget (any addition pads
    to at least the current length)."""
    if plan.size >= policy.max_batch_size:
        return True
    return (plan.size + 1) * plan.padded_length > policy.max_batch_tokens
