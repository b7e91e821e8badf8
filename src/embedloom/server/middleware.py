"""The outermost layer of every request: scope, request id, access log, metrics, and the
last line of defence that turns an unexpected exception into a 500 JSON body.

A plain ASGI middleware (not Starlette's ``BaseHTTPMiddleware``): it adds no
task per request and leaves streaming and disconnects untouched.
"""

from __future__ import annotations

import logging
import os
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedloom.scope import request_scope
from embedloom.server.errors import error_response
from embedloom.server.metrics import ServerMetrics

__all__ = ["RequestContextMiddleware"]

access_log = logging.getLogger("embedloom.access")
logger = logging.getLogger(__name__)

_REQUEST_ID_HEADER = b"x-request-id"
# Which process answered: under --workers, so a client (or a test) can tell the
# workers apart. Read per response, since a preloaded app is built before fork.
_WORKER_HEADER = b"x-embedloom-worker"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        offered = _header(scope, _REQUEST_ID_HEADER)
        status = 500
        response_started = False

        with request_scope(offered) as request:
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
                response = error_response(
                    scope["path"],
                    500,
                    f"internal error; quote request id {request.request_id} when reporting it",
                    openai_type="server_error",
                    tei_type="internal",
                )
                await response(scope, receive, send_with_id)
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
