"""The outermost layer of every request: scope, request id, access log, metrics, and the
last line of defence that turns an unexpected exception into a 500 JSON body.

A plain ASGI middleware (not Starlette's ``BaseHTTPMiddleware``): it adds no
task per request and leaves streaming and disconnects untouched.
"""

from __future__ import annotations

import logging
import math
import os
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedloom import tracing
from embedloom.config import Settings
from embedloom.errors import EmbedloomError, InvalidInput
from embedloom.scope import PRIORITIES, Priority, request_scope
from embedloom.server.errors import response_for
from embedloom.server.metrics import ServerMetrics

__all__ = ["RequestContextMiddleware"]

access_log = logging.getLogger("embedloom.access")
logger = logging.getLogger(__name__)

_REQUEST_ID_HEADER = b"x-request-id"
# Which process answered: under --workers, so a client (or a test) can tell the
# workers apart. Read per response, since a preloaded app is built before fork.
_WORKER_HEADER = b"x-embedloom-worker"


_TIMEOUT_HEADER = b"x-request-timeout"
_PRIORITY_HEADER = b"x-priority"
_TRACEPARENT_HEADER = b"traceparent"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServerMetrics, settings: Settings) -> None:
        self._app = app
        self._metrics = metrics
        self._max_timeout = settings.max_request_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        offered = _header(scope, _REQUEST_ID_HEADER)
        status = 500
        response_started = False

        try:
            timeout, priority = self._deadline_and_priority(scope)
        except ValueError as exc:
            await response_for(InvalidInput(str(exc)), scope["path"])(scope, receive, send)
            self._metrics.observe_request(
                _route_template(scope), scope["method"], 422, time.perf_counter() - started
            )
            return
        traceparent = _header(scope, _TRACEPARENT_HEADER)
        with (
            request_scope(
                offered, timeout=timeout, priority=priority, trace_parent=traceparent
            ) as request,
            tracing.request_span(f"{scope['method']} {scope['path']}", traceparent),
        ):
            request_id = request.request_id.encode()

            async def send_with_id(message: Message) -> None:
                nonlocal status, response_started
                if message["type"] == "http.response.start":
                    status = message["status"]
                    response_started = True
                    headers = [h for h in message.get("headers", []) if h[0] != _REQUEST_ID_HEADER]
                    headers.append((_REQUEST_ID_HEADER, request_id))
                    headers.append((_WORKER_HEADER, str(os.getpid()).encode()))
                    message = {**message, "headers": headers}
                await send(message)

            try:
                await self._app(scope, receive, send_with_id)
            except Exception:
                logger.exception("unhandled error while serving %s", scope["path"])
                if response_started:
                    raise
                internal = EmbedloomError(
                    f"internal error; quote request id {request.request_id} when reporting it"
                )
                await response_for(internal, scope["path"])(scope, receive, send_with_id)
            finally:
                seconds = time.perf_counter() - started
                route = _route_template(scope)
                self._metrics.observe_request(route, scope["method"], status, seconds)
                access_log.info(
                    "%s %s %d %.1fms",
                    scope["method"],
                    scope["path"],
                    status,
                    seconds * 1000,
                    extra={"status": status, "duration_ms": round(seconds * 1000, 3)},
                )

    def _deadline_and_priority(self, scope: Scope) -> tuple[float | None, Priority]:
        """X-Request-Timeout (seconds, capped by the server's maximum) and X-Priority."""
        timeout: float | None = None
        raw = _header(scope, _TIMEOUT_HEADER)
        if raw is not None:
            try:
                timeout = float(raw)
            except ValueError:
                timeout = math.nan
            if not math.isfinite(timeout) or timeout <= 0:
                raise ValueError(
                    f"X-Request-Timeout must be a positive number of seconds, got {raw!r}"
                )
            timeout = min(timeout, self._max_timeout)
        priority = (_header(scope, _PRIORITY_HEADER) or "normal").strip().lower()
        if priority not in PRIORITIES:
            raise ValueError(f"X-Priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
        return timeout, priority


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _route_template(scope: Scope) -> str:
    """The matched route's path template (bounded label cardinality), not the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
