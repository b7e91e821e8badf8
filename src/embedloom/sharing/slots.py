"""One thread budget for the whole process, held as compute slots.

Each model gets a sharing plan as if it were alone (``plan.py``): its replicas
together may use the whole budget. What keeps several models within the budget
is this limiter: an inference thread takes as many slots as its backend runs
compute threads (a replica of 2 intra-op threads takes 2; ONNX Runtime and
OpenVINO fix that number when a session is made) before it runs a batch, and
gives them back after. So no more compute threads are busy than the budget at
any moment, and no model reserves cores it is not using: while one model is
idle, the others' replicas take every slot.

Slots are granted first come, first served: a model flooded with work cannot
overtake a batch of another model that asked first, so each model's batches
keep running under the other's load.

The models sharing slots also publish their backlogs here (seconds of queued
work, read on the event loop): a request to one model waits behind the others'
batches too, and its admission counts them.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ComputeSlots", "SlotPermit", "SlotStatistics"]


@dataclass(frozen=True, slots=True)
class SlotStatistics:
    budget: int
    held: int  # slots held now, by everyone
    peak_held: int  # the most ever held at once
    waiting: int  # threads waiting for slots now
    grants: int  # permits granted in all
    waited: int  # of those, how many had to wait
    held_by: dict[str, int]  # slots held now, per owner (model)
    peak_held_by: dict[str, int]  # the most each owner ever held at once


class SlotPermit:
    """Slots held by one batch; released once, by whoever gets there first (the
    thread when its batch ends, or the worker when it gives up on a hung thread)."""

    __slots__ = ("_released", "_slots", "count", "owner")

    def __init__(self, slots: ComputeSlots, owner: str, count: int) -> None:
        self._slots = slots
        self._released = False
        self.owner = owner
        self.count = count

    def release(self) -> None:
        self._slots._release(self)

    def __enter__(self) -> SlotPermit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class ComputeSlots:
    """A counting limiter over the thread budget with per-owner accounting; thread-safe.

    ``acquire`` blocks an inference thread (never an event loop) until its slots
    are free and every earlier request has been served.
    """

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError("a thread budget has at least one slot")
        self._budget = budget
        self._condition = threading.Condition()
        self._queue: deque[object] = deque()  # tickets of waiting threads, oldest first
        self._held = 0
        self._peak = 0
        self._held_by: Counter[str] = Counter()
        self._peak_by: Counter[str] = Counter()
        self._grants = 0
        self._waited = 0
        self._backlogs: dict[str, Callable[[], float]] = {}

    @property
    def budget(self) -> int:
        return self._budget

    def publish_backlog(self, owner: str, seconds: Callable[[], float] | None) -> None:
        """Say how to read ``owner``'s queued work in seconds (None: it left)."""
        if seconds is None:
            self._backlogs.pop(owner, None)
        else:
            self._backlogs[owner] = seconds

    def backlogs(self, *, excluding: str) -> list[float]:
        """Seconds of queued work of every owner but ``excluding``."""
        return [read() for owner, read in self._backlogs.items() if owner != excluding]

    def acquire(self, owner: str, count: int) -> SlotPermit:
        """Wait for ``count`` slots (at most the budget: a replica planned wider than
        the budget still runs, alone) and hold them for ``owner``."""
        count = max(1, min(count, self._budget))
        ticket = object()
        with self._condition:
            self._queue.append(ticket)
            waited = False
            while self._queue[0] is not ticket or self._held + count > self._budget:
                waited = True
                self._condition.wait()
            self._queue.popleft()
            self._held += count
            self._peak = max(self._peak, self._held)
            self._held_by[owner] += count
            self._peak_by[owner] = max(self._peak_by[owner], self._held_by[owner])
            self._grants += 1
            self._waited += waited
            # The next in line may fit beside us.
            self._condition.notify_all()
        return SlotPermit(self, owner, count)

    def _release(self, permit: SlotPermit) -> None:
        with self._condition:
            if permit._released:
                return
            permit._released = True
            self._held -= permit.count
            self._held_by[permit.owner] -= permit.count
            self._condition.notify_all()

    def statistics(self) -> SlotStatistics:
        with self._condition:
            return SlotStatistics(
                budget=self._budget,
                held=self._held,
                peak_held=self._peak,
                waiting=len(self._queue),
                grants=self._grants,
                waited=self._waited,
                held_by={owner: n for owner, n in self._held_by.items() if n},
                peak_held_by=dict(self._peak_by),
            )

    def __repr__(self) -> str:
        stats = self.statistics()
        return f"<ComputeSlots held={stats.held}/{stats.budget} waiting={stats.waiting}>"
