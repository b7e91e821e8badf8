"""Admission as permits: acquired once per request, given back input by input."""

from __future__ import annotations

import asyncio

import pytest

from embedloom.engine.admission import Admission
from embedloom.errors import Overloaded, TooManyInputs


def test_each_class_fills_its_share_and_high_the_whole_bound() -> None:
    admission = Admission(100)
    assert (admission.limit("low"), admission.limit("normal"), admission.limit("high")) == (
        50,
        90,
        100,
    )
    held = admission.acquire(50, "low")
    with pytest.raises(Overloaded, match="low priority: 50 inputs admitted, 50 allowed"):
        admission.acquire(1, "low")
    admission.acquire(40, "normal")
    with pytest.raises(Overloaded):
        admission.acquire(1, "normal")
    admission.acquire(10, "high")
    assert admission.statistics().admitted_inputs == 100
    assert admission.statistics().requests_rejected == 2
    held.release_all()
    assert admission.statistics().admitted_inputs == 50


def test_a_request_over_the_bound_is_refused_and_one_over_its_share_admitted_alone() -> None:
    admission = Admission(10)
    with pytest.raises(TooManyInputs):
        admission.acquire(11, "high")
    admission.acquire(8, "low").release_all()  # over low's share of 5, into an empty engine
    assert admission.statistics().requests_rejected == 0


async def test_a_permit_is_given_back_input_by_input_and_idle_is_seen() -> None:
    admission = Admission(10)
    permit = admission.acquire(3, "normal")
    idle = asyncio.ensure_future(admission.wait_idle())
    permit.release()
    permit.release(0)
    await asyncio.sleep(0)  # let the waiter run: it must still be waiting
    assert not idle.done()
    assert (permit.held, admission.admitted) == (2, 2)
    permit.release_all()
    await asyncio.wait_for(idle, 5)
    assert (permit.held, admission.admitted) == (0, 0)


def test_retry_after_follows_the_drain_rate_within_its_range() -> None:
    admission = Admission(1000)
    admission.acquire(600, "high")
    assert admission.retry_after() == 1.0  # nothing measured yet: the floor
    admission.record_drain(10, 1.0)  # 10 inputs/s: 600 admitted ≈ 60 s
    assert admission.retry_after() == pytest.approx(60.0, abs=1.0)
