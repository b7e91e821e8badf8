"""The request scope: who the current work is for, carried in ``contextvars``.

A scope is set where a request enters (the HTTP middleware, or a library call)
and read anywhere below it: log lines, metrics, the engine. It follows work
into threads only because all offloading goes through ``embedloom.offload``,
which copies the context.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = [
    "RequestScope",
    "ScopeLogFilter",
    "current_scope",
    "new_request_id",
    "request_scope",
    "valid_request_id",
]

# Request ids arrive from clients; anything odd is replaced rather than
# echoed into logs and headers.
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@dataclass(frozen=True, slots=True)
class RequestScope:
    """What is known about the request being served in this context."""

    request_id: str


_current: ContextVar[RequestScope | None] = ContextVar("embedloom_scope", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(candidate: str | None) -> bool:
    return candidate is not None and _REQUEST_ID_PATTERN.fullmatch(candidate) is not None


def current_scope() -> RequestScope | None:
    return _current.get()


@contextmanager
def request_scope(request_id: str | None = None) -> Iterator[RequestScope]:
    """Enter a request's scope for the duration of the block."""
    if request_id is None or not valid_request_id(request_id):
        request_id = new_request_id()
    scope = RequestScope(request_id)
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)


class ScopeLogFilter(logging.Filter):
    """Stamps every record with the current request id ('-' outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            scope = _current.get()
            record.request_id = scope.request_id if scope is not None else "-"
        return True
