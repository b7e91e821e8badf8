"""Deadlines, priority and streaming in the engine, with a fake backend and a fake
clock: deterministic, no sleeps (see test_engine for the harness)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedloom import DeadlineExceeded, InputTooLong, Overloaded
from embedloom.scope import request_scope
from tests.fakes import FakeBackend
from tests.test_engine import FakeClock, expected, running, until_queued


async def test_an_expired_request_is_dropped_unrun_and_fails_with_deadline_exceeded() -> None:
    backend = FakeBackend(hold_batches=True)
    clock = FakeClock()
    async with running(backend, clock, max_batch_size=1) as engine:
        busy = asyncio.create_task(engine.embed(["busy"]))
        assert await asyncio.to_thread(backend.wait_entered) == ["busy"]
        # "late" goes into the one batch prepared ahead while the model is busy;
        # "fine" waits in the queue.
        late = asyncio.create_task(engine.embed(["late"], timeout=5))
        on_time = asyncio.create_task(engine.embed(["fine"], timeout=60))
        await until_queued(engine, 1)
        clock.now += 10  # past the first deadline, not the second
        backend.release()  # the model frees up; the batcher plans the next batch
        await busy
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            await late
        assert await asyncio.to_thread(backend.wait_entered) == ["fine"]
        backend.release()
        np.testing.assert_array_equal((await on_time).vectors, expected(["fine"]))
        stats = engine.statistics()
    assert ["late"] not in backend.batches  # never cost model time
    assert stats.requests_expired == 1


async def test_the_request_scope_deadline_applies_when_no_timeout_is_given() -> None:
    backend = FakeBackend()
    async with running(backend) as engine:
        # Admitted with a deadline already in the past (real monotonic clock): the
        # expiry timer fails it at the loop's next turn.
        with request_scope("r1", timeout=0.000001), pytest.raises(DeadlineExceeded):
            await engine.embed(["x"] * 3)


async def test_high_priority_runs_first_and_low_still_progresses_by_ageing() -> None:
    backend = FakeBackend(hold_batches=True)
    clock = FakeClock()
    async with running(backend, clock, max_batch_size=1) as engine:
        busy = asyncio.create_task(engine.embed(["busy"]))
        assert await asyncio.to_thread(backend.wait_entered) == ["busy"]
        ahead = asyncio.create_task(engine.embed(["ahead"]))  # the batch prepared ahead
        await until_queued(engine, 0)
        low = asyncio.create_task(engine.embed(["low"], priority="low"))
        normal = asyncio.create_task(engine.embed(["normal"]))
        high = asyncio.create_task(engine.embed(["high"], priority="high"))
        await until_queued(engine, 3)
        backend.release()  # "ahead" runs; the most urgent, "high", is prepared next
        assert await asyncio.to_thread(backend.wait_entered) == ["ahead"]
        # Two ageing periods (2 s each) later the low input ranks with fresh high
        # work, and being older goes first: sustained high load cannot starve it.
        clock.now += 4.5
        fresh = asyncio.create_task(engine.embed(["fresh"], priority="high"))
        await until_queued(engine, 3)
        backend.release(5)
        await asyncio.gather(busy, ahead, low, normal, high, fresh)
    assert backend.batches == [["busy"], ["ahead"], ["high"], ["normal"], ["low"], ["fresh"]]


async def test_a_flood_of_low_priority_work_cannot_lock_out_high() -> None:
    backend = FakeBackend(hold_batches=True)
    async with running(backend, max_queued_inputs=10, max_client_batch_size=10) as engine:
        flood = [asyncio.create_task(engine.embed(["l"], priority="low")) for _ in range(5)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="low priority"):
            await engine.embed(["l"], priority="low")  # low may fill half the bound
        with pytest.raises(Overloaded, match="normal priority"):
            await engine.embed(["n"] * 5)  # normal may fill 90%
        high = asyncio.create_task(engine.embed(["h"] * 5, priority="high"))
        await asyncio.sleep(0)
        assert engine.statistics().admitted_inputs == 10
        backend.release(100)
        await asyncio.gather(high, *flood)


async def test_embed_stream_yields_in_order_with_few_chunks_in_flight() -> None:
    backend = FakeBackend(hold_batches=True)
    texts = [f"t{i}" * (1 + i % 3) for i in range(20)]
    async with running(backend, max_batch_size=4) as engine:
        received: list[tuple[int, np.ndarray]] = []

        async def consume() -> None:
            async for item in engine.embed_stream(texts, chunk_size=4, in_flight=2):
                received.append(item)

        task = asyncio.create_task(consume())
        await asyncio.to_thread(backend.wait_entered)
        # Two chunks of four admitted, no more, however long the list.
        assert engine.statistics().admitted_inputs == 8
        backend.release(100)
        await task
    assert [index for index, _ in received] == list(range(20))
    np.testing.assert_array_equal(np.array([v for _, v in received]), expected(texts))


async def test_leaving_a_stream_early_drops_its_queued_chunks() -> None:
    backend = FakeBackend()
    texts = [f"s{i}" for i in range(40)]
    async with running(backend, max_batch_size=4) as engine:
        stream = engine.embed_stream(texts, chunk_size=4, in_flight=3)
        async for index, _ in stream:
            if index == 5:
                break
        await stream.aclose()
        # A chunk already in a batch on the inference thread finishes on its own;
        # everything admitted is then given back (a leak would never drain).
        await asyncio.wait_for(engine.drain(), 10)
        stats = engine.statistics()
    assert stats.admitted_inputs == 0
    assert stats.inputs_embedded < 40


async def test_an_over_long_input_in_a_later_chunk_is_named_by_its_list_index() -> None:
    backend = FakeBackend(max_input_tokens=8)
    texts = ["ok"] * 9 + ["x" * 20]
    async with running(backend, max_batch_size=4) as engine:
        with pytest.raises(InputTooLong, match="input 9 "):
            async for _ in engine.embed_stream(texts, chunk_size=4):
                pass
