"""The request scope: who the current work is for, carried in ``contextvars``.

A scope is set where a request enters (the HTTP middleware, or a library call)
and read anywhere below it: log lines, metrics, the engine (its deadline,
priority and tenant: whose fair share it is served from). It follows work
into threads only because all offloading goes through ``embedloom.offload``,
which copies the context.

Batches mix requests, so a batch has a scope of its own, entered by the
inference thread while the batch runs: log lines written then name the batch
and every request in it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "PRIORITIES",
    "BatchScope",
    "Priority",
    "RequestScope",
    "ScopeLogFilter",
    "batch_scope",
    "current_batch",
    "current_scope",
    "new_request_id",
    "request_scope",
    "tenant_scope",
    "valid_request_id",
]

# Everyone's tenant when no key name or tenant header says otherwise.
DEFAULT_TENANT = "default"

Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")

# Request ids arrive from clients; anything odd is replaced rather than
# echoed into logs and headers.
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@dataclass(frozen=True, slots=True)
class RequestScope:
    """What is known about the request being served in this context.

    ``deadline``: when the caller stops waiting, on ``clock`` (None: no limit):
    the event loop's time when the scope was entered on a loop — the one clock
    of deadlines, timers and ageing — else ``time.monotonic``, which is what a
    default loop's time reads. ``cancelled``: set when the caller is gone (the HTTP client
    disconnected); blocking work in other threads can check it and stop early.
    """

    request_id: str
    deadline: float | None = None
    priority: Priority = "normal"
    trace_parent: str | None = None  # the incoming W3C traceparent, if any
    tenant: str = DEFAULT_TENANT
    tenant_weight: float = 1.0  # its weight in fair shares of the compute
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def cancel(self) -> None:
        self.cancelled.set()

    def remaining(self) -> float | None:
        """Seconds until the deadline (negative once past); None without one."""
        return None if self.deadline is None else self.deadline - self.clock()


@dataclass(frozen=True, slots=True)
class BatchScope:
    """The batch an inference thread is running, and the requests it serves."""

    batch_id: int
    request_ids: tuple[str, ...]


_current: ContextVar[RequestScope | None] = ContextVar("embedloom_scope", default=None)
_batch: ContextVar[BatchScope | None] = ContextVar("embedloom_batch", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(candidate: str | None) -> bool:
    return candidate is not None and _REQUEST_ID_PATTERN.fullmatch(candidate) is not None


def current_scope() -> RequestScope | None:
    return _current.get()


def current_batch() -> BatchScope | None:
    return _batch.get()


@contextmanager
def request_scope(
    request_id: str | None = None,
    *,
    timeout: float | None = None,
    priority: Priority = "normal",
    trace_parent: str | None = None,
) -> Iterator[RequestScope]:
    """Enter a request's scope for the duration of the block."""
    if request_id is None or not valid_request_id(request_id):
        request_id = new_request_id()
    clock = loop_clock()
    deadline = clock() + timeout if timeout is not None else None
    scope = RequestScope(request_id, deadline, priority, trace_parent, clock=clock)
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)


@contextmanager
def tenant_scope(tenant: str, weight: float = 1.0) -> Iterator[RequestScope | None]:
    """Within the block, the current request is served for ``tenant`` (known only once
    its credentials are checked, after the scope was entered)."""
    scope = _current.get()
    if scope is None:
        yield None
        return
    token = _current.set(dataclasses.replace(scope, tenant=tenant, tenant_weight=weight))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


@contextmanager
def batch_scope(batch_id: int, request_ids: tuple[str, ...]) -> Iterator[BatchScope]:
    """Enter a batch's scope (on the thread running it) for the duration of the block."""
    scope = BatchScope(batch_id, request_ids)
    token = _batch.set(scope)
    try:
        yield scope
    finally:
        _batch.reset(token)


class ScopeLogFilter(logging.Filter):
    """Stamps every record with the current request id ('-' outside a request).

    Inside a batch, ``request_id`` lists the batch's requests (comma-separated,
    so a search for one id finds the line) and ``batch_id`` and ``request_ids``
    are added.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "request_id"):
            return True
        batch = _batch.get()
        if batch is not None:
            record.batch_id = batch.batch_id
            record.request_ids = list(batch.request_ids)
            record.request_id = ",".join(batch.request_ids) or "-"
            return True
        scope = _current.get()
        record.request_id = scope.request_id if scope is not None else "-"
        return True


def loop_clock() -> Callable[[], float]:
    """The running event loop's time, the one clock of deadlines and timers; in a
    thread without a loop, ``time.monotonic`` (what a default loop's time reads)."""
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:  # no loop in this thread
        return time.monotonic
