"""Offloading keeps the request scope, and nothing else in the package makes threads."""

from __future__ import annotations

import asyncio
import re
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import embedloom
from embedloom.offload import iterate_in_thread, run_in_thread, start_thread
from embedloom.scope import current_scope, request_scope


async def test_run_in_thread_carries_the_request_scope() -> None:
    def inside() -> tuple[str | None, str]:
        scope = current_scope()
        return (scope.request_id if scope else None), threading.current_thread().name

    with request_scope("req-42"):
        request_id, thread_name = await run_in_thread(inside)
    assert request_id == "req-42"
    assert thread_name.startswith("embedloom-offload")


def test_start_thread_carries_the_scope_of_its_starter() -> None:
    seen: list[str | None] = []
    with request_scope("req-7"):
        thread = start_thread(
            lambda: seen.append(getattr(current_scope(), "request_id", None)), name="t"
        )
    thread.join()
    assert seen == ["req-7"]


def test_odd_request_ids_are_replaced() -> None:
    with request_scope("bad id\nwith newline") as scope:
        assert re.fullmatch(r"[0-9a-f]{32}", scope.request_id)
    assert current_scope() is None


def test_only_the_offload_module_creates_threads() -> None:
    package = Path(embedloom.__file__).parent
    forbidden = re.compile(r"\bThread\(|run_in_executor\(|ThreadPoolExecutor\(|to_thread\(")
    offenders = [
        f"{path.relative_to(package)}:{number}"
        for path in package.rglob("*.py")
        if path.name != "offload.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line)
    ]
    assert offenders == []


async def test_scope_does_not_leak_between_tasks() -> None:
    async def other() -> str | None:
        scope = current_scope()
        return scope.request_id if scope else None

    with request_scope("mine"):
        task = asyncio.create_task(other())
    with request_scope("later"):
        assert await task == "mine"


# -- the bridge ------------------------------------------------------------------


async def wait_for(event: threading.Event) -> bool:
    """Wait for a thread's event without blocking the loop, and without leaving a
    thread behind to spoil the thread counts."""
    with ThreadPoolExecutor(max_workers=1) as waiter:
        return await asyncio.get_running_loop().run_in_executor(waiter, event.wait, 60)


async def test_items_arrive_in_order_and_the_generator_runs_in_a_thread() -> None:
    def numbers(count: int) -> Iterator[tuple[int, str]]:
        for number in range(count):
            yield number, threading.current_thread().name

    async with iterate_in_thread(numbers, 50, max_buffer=4) as items:
        received = [item async for item in items]
    assert [number for number, _ in received] == list(range(50))
    assert {name for _, name in received} != {threading.current_thread().name}


async def test_an_error_in_the_producer_is_raised_in_the_consumer_with_its_traceback() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("bad row 2")

    async with iterate_in_thread(failing) as items:
        assert await items.__anext__() == 1
        with pytest.raises(ValueError, match="bad row 2") as raised:
            await items.__anext__()
    frames = [frame.name for frame in traceback.extract_tb(raised.value.__traceback__)]
    assert "failing" in frames  # the producer's own frame, from the other thread


async def test_the_producer_is_never_more_than_max_buffer_items_ahead() -> None:
    max_buffer = 4
    asked = 0
    reached_limit = threading.Event()

    def counting() -> Iterator[int]:
        nonlocal asked
        while True:
            asked += 1
            if asked == 1 + max_buffer:
                reached_limit.set()
            yield asked

    threads_before = threading.active_count()
    items = iterate_in_thread(counting, max_buffer=max_buffer)
    assert await items.__anext__() == 1  # one taken: the producer may be max_buffer ahead
    assert await wait_for(reached_limit)
    await items.aclose()
    # It stopped at the limit: blocked on a slot, it never asked for one more.
    assert asked == 1 + max_buffer
    assert threading.active_count() == threads_before


async def test_leaving_early_stops_the_producer_and_ends_its_thread() -> None:
    produced = 0
    closed = threading.Event()

    def endless() -> Iterator[int]:
        nonlocal produced
        try:
            while True:
                produced += 1
                yield produced
        finally:
            closed.set()

    threads_before = threading.active_count()
    async with iterate_in_thread(endless, max_buffer=2) as items:
        async for item in items:
            if item == 3:
                break
    assert closed.is_set()
    after_close = produced
    assert after_close <= 3 + 2  # what the buffer allowed, nothing after
    assert threading.active_count() == threads_before


async def test_cancelling_the_consumer_stops_the_producer() -> None:
    step_started = threading.Event()
    release = threading.Event()
    closed = threading.Event()
    produced: list[int] = []

    def slow() -> Iterator[int]:
        try:
            for number in range(100):
                step_started.set()
                release.wait(60)  # a blocking step, e.g. reading a file
                produced.append(number)
                yield number
        finally:
            closed.set()

    threads_before = threading.active_count()

    async def consume() -> None:
        async with iterate_in_thread(slow, max_buffer=1) as items:
            async for _ in items:
                pass

    task = asyncio.create_task(consume())
    assert await wait_for(step_started)
    task.cancel()
    release.set()  # the step under way finishes; the producer then sees the stop
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set()
    assert produced == [0]  # nothing produced after the cancellation
    assert threading.active_count() == threads_before


async def test_a_caller_supplied_executor_is_used_and_left_running() -> None:
    def names() -> Iterator[str]:
        yield threading.current_thread().name

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="callers") as executor:
        async with iterate_in_thread(names, executor=executor) as items:
            names_seen = [name async for name in items]
        assert names_seen[0].startswith("callers")
        assert executor.submit(lambda: 42).result() == 42
