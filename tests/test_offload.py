"""Offloading keeps the request scope, and nothing else in the package makes threads."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import embedloom
from embedloom.offload import run_in_thread, start_thread
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
