"""Admission: whether an engine takes a request now, or refuses it at once.

Two bounds. By time (``--admission wait``, the default): a request is admitted
only if the work predicted to run before it (``Scheduler.predicted_wait``: the
fair order's work ahead, by the measured drain rate) drains within the target
wait, or its own deadline if that is sooner; a request is never refused when
nothing is admitted (its own work may be longer than the target: that is
service, not waiting). By count, always: how many inputs an engine holds
(queued + running), per priority — a memory bound, and all there is with
``--admission count``.

Capacity is held as a ``Permit``: ``Admission.acquire`` fails fast
(``Overloaded``, with a Retry-After estimated from the measured drain rate) or
hands the request a permit for its inputs; the request gives capacity back
through that permit as each input is done with (delivered, failed, dropped),
or all that is left at once when its caller goes away. Nothing else adjusts
the count.

Per priority class, the share of the bound that work of that class may fill:
a flood of low (or normal) priority work always leaves room for high. A
request larger than its class's share is still admitted into an engine
holding nothing else.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from embedloom.errors import Overloaded, TooManyInputs
from embedloom.scope import Priority
from embedloom.stats import RateEstimator

__all__ = ["Admission", "AdmissionStatistics", "Permit"]

_CLASS_SHARE: dict[Priority, float] = {"high": 1.0, "normal": 0.9, "low": 0.5}
# Retry-After is a hint; keep it within what a client would sensibly wait.
_RETRY_AFTER_RANGE = (1.0, 60.0)


@dataclass(frozen=True, slots=True)
class AdmissionStatistics:
    admitted_inputs: int
    max_inputs: int
    requests_rejected: int


class Permit:
    """The capacity one request holds: ``held`` inputs, given back by its owner."""

    __slots__ = ("_admission", "held")

    def __init__(self, admission: Admission, size: int) -> None:
        self._admission = admission
        self.held = size

    def release(self, count: int = 1) -> None:
        if count <= 0:
            return
        self.held -= count
        self._admission._give_back(count)

    def release_all(self) -> None:
        self.release(self.held)


class Admission:
    def __init__(self, max_inputs: int) -> None:
        self._max = max_inputs
        self._admitted = 0
        self._rejected = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_rate = RateEstimator()

    @property
    def admitted(self) -> int:
        return self._admitted

    def limit(self, priority: Priority = "normal") -> int:
        """How many inputs may be admitted in all when a request of ``priority``
        arrives (the bound for high; less for normal and low)."""
        if priority == "high":
            return self._max
        return max(1, int(self._max * _CLASS_SHARE[priority]))

    def acquire(
        self,
        size: int,
        priority: Priority,
        *,
        wait: float | None = None,
        max_wait: float | None = None,
    ) -> Permit:
        """A permit for ``size`` inputs, or ``TooManyInputs`` / ``Overloaded`` at once.

        ``wait``: the seconds the request is predicted to wait (None: not known);
        over ``max_wait`` it is refused, unless nothing is admitted."""
        if size > self._max:
            raise TooManyInputs(count=size, limit=self._max)
        if wait is not None and max_wait is not None and wait > max_wait and self._admitted > 0:
            self._rejected += 1
            # Once the work ahead has drained to the target, it would be admitted.
            retry_after = _within_range(wait - max_wait)
            raise Overloaded(
                f"about {wait:.3f}s of queued work would run before this request; the "
                f"server admits behind at most {max_wait:.3f}s (--max-queue-wait, or the "
                f"request's own deadline); retry in about {retry_after:.0f}s",
                retry_after=retry_after,
            )
        share = self.limit(priority)
        if self._admitted + size > share and self._admitted > 0:
            self._rejected += 1
            retry_after = self.retry_after()
            raise Overloaded(
                f"at capacity for {priority} priority: {self._admitted} inputs admitted, "
                f"{share} allowed; retry in about {retry_after:.0f}s",
                retry_after=retry_after,
            )
        self._admitted += size
        self._idle.clear()
        return Permit(self, size)

    def record_drain(self, inputs: int, seconds: float) -> None:
        """A batch of ``inputs`` ran in ``seconds``: the rate Retry-After is taken from."""
        self._drain_rate.record(inputs, seconds)

    def retry_after(self) -> float:
        rate = self._drain_rate.rate
        return _within_range(self._admitted / rate if rate else _RETRY_AFTER_RANGE[0])

    async def wait_idle(self) -> None:
        """Return once nothing is admitted."""
        await self._idle.wait()

    def statistics(self) -> AdmissionStatistics:
        return AdmissionStatistics(self._admitted, self._max, self._rejected)

    def _give_back(self, count: int) -> None:
        self._admitted -= count
        if self._admitted == 0:
            self._idle.set()

    def __repr__(self) -> str:
        return f"<Admission admitted={self._admitted}/{self._max} rejected={self._rejected}>"


def _within_range(seconds: float) -> float:
    return min(max(seconds, _RETRY_AFTER_RANGE[0]), _RETRY_AFTER_RANGE[1])
