"""The process's compute slots: never more held than the budget, first come first
served, each permit released once — with real threads, synchronised by events."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from embedloom.sharing.slots import ComputeSlots, SlotPermit

# A bound on how long a blocked thread may take to be seen blocking, not a timing:
# the assertions are on the limiter's statistics.
_PATIENCE = 30.0


def _until(condition: Callable[[], bool]) -> None:
    """Wait for another thread to reach a state the limiter's statistics show."""
    event = threading.Event()
    for _ in range(30_000):
        if condition():
            return
        event.wait(_PATIENCE / 30_000)
    raise AssertionError("the state was never reached")


def _acquire_in_thread(
    slots: ComputeSlots, owner: str, count: int, granted: list[SlotPermit]
) -> threading.Thread:
    thread = threading.Thread(target=lambda: granted.append(slots.acquire(owner, count)))
    thread.start()
    return thread


def test_a_request_past_the_budget_waits_until_slots_are_released() -> None:
    slots = ComputeSlots(2)
    first = slots.acquire("a", 1)
    second = slots.acquire("b", 1)
    granted: list[SlotPermit] = []
    waiter = _acquire_in_thread(slots, "a", 1, granted)
    _until(lambda: slots.statistics().waiting == 1)
    assert granted == []
    assert slots.statistics().held == 2
    second.release()
    waiter.join(_PATIENCE)
    assert len(granted) == 1
    stats = slots.statistics()
    assert (stats.held, stats.peak_held, stats.grants, stats.waited) == (2, 2, 3, 1)
    assert stats.held_by == {"a": 2}
    assert stats.peak_held_by == {"a": 2, "b": 1}
    first.release()
    granted[0].release()
    assert slots.statistics().held == 0


def test_slots_are_granted_in_arrival_order_so_a_wide_request_is_not_overtaken() -> None:
    slots = ComputeSlots(2)
    holding = slots.acquire("a", 1)
    granted: list[SlotPermit] = []
    wide = _acquire_in_thread(slots, "b", 2, granted)  # needs both: waits
    _until(lambda: slots.statistics().waiting == 1)
    narrow = _acquire_in_thread(slots, "a", 1, granted)  # one is free, but b came first
    _until(lambda: slots.statistics().waiting == 2)
    assert granted == []
    holding.release()
    wide.join(_PATIENCE)
    assert [p.owner for p in granted] == ["b"]
    granted[0].release()
    narrow.join(_PATIENCE)
    assert [p.owner for p in granted] == ["b", "a"]


def test_a_permit_is_released_once_and_wider_than_the_budget_is_capped() -> None:
    slots = ComputeSlots(2)
    permit = slots.acquire("a", 8)
    assert permit.count == 2
    permit.release()
    permit.release()  # the worker and the thread may both try
    assert slots.statistics().held == 0
    with slots.acquire("a", 1):
        assert slots.statistics().held_by == {"a": 1}
    assert slots.statistics().held_by == {}


def test_a_budget_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ComputeSlots(0)


def test_many_threads_never_hold_more_than_the_budget() -> None:
    slots = ComputeSlots(3)
    start = threading.Barrier(8)
    over_budget: list[int] = []

    def work(owner: str) -> None:
        start.wait()
        for _ in range(200):
            with slots.acquire(owner, 2 if owner == "wide" else 1):
                held = slots.statistics().held
                if held > 3:
                    over_budget.append(held)

    threads = [
        threading.Thread(target=work, args=("wide" if i % 2 else "narrow",)) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(_PATIENCE * 4)
    stats = slots.statistics()
    assert over_budget == []
    assert stats.peak_held <= 3
    assert stats.grants == 1600
    assert stats.held == 0
    assert stats.waiting == 0
