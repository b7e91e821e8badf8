"""Errors → HTTP: the one table of statuses, the route dialects, and the body shapes.

Every error answer goes through ``response_for``: the engine's domain errors
(``embedloom.errors``), the HTTP layer's own refusals defined here (a missing
key, a body too large or too slow, a route that does not exist), and the last
line of defence's 500. Each route family answers in its clients' dialect,
declared once in ``ROUTE_DIALECTS``: OpenAI's
``{"error": {"message", "type", "param", "code"}}`` under ``/v1/``, TEI's
``{"id", "message"}`` under ``/v2/`` (Cohere), TEI's
``{"error": "...", "error_type": "..."}`` everywhere else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import orjson
from starlette.responses import Response

from embedloom.errors import (
    BackendError,
    DeadlineExceeded,
    EmbedloomError,
    InputTooLong,
    InvalidInput,
    ModelFetchFailed,
    ModelLoading,
    ModelNotFound,
    NotThisTask,
    Overloaded,
    TooManyInputs,
    Unavailable,
)
from embedloom.scope import current_scope

__all__ = [
    "ERROR_STATUS",
    "ROUTE_DIALECTS",
    "BodyTimeout",
    "BodyTooLarge",
    "ErrorKind",
    "HttpRefusal",
    "MethodNotAllowed",
    "NoSuchRoute",
    "Unauthorized",
    "UnsupportedMediaType",
    "kind_of",
    "refusal_for_status",
    "response_for",
]

Dialect = Literal["openai", "cohere", "tei"]

# Path prefix → the dialect its errors are written in; the first match wins.
ROUTE_DIALECTS: tuple[tuple[str, Dialect], ...] = (
    ("/v1/", "openai"),
    ("/embeddings", "openai"),  # TEI's path for the OpenAI route
    ("/v2/", "cohere"),
    ("/", "tei"),
)


class HttpRefusal(EmbedloomError):
    """A refusal by the HTTP layer itself, before or around the engine; may carry
    headers to send with it."""

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = dict(headers or {})


class Unauthorized(HttpRefusal):
    """No API key, or a wrong one."""


class UnsupportedMediaType(HttpRefusal):
    """A body that is not JSON."""


class BodyTooLarge(HttpRefusal):
    """A body over ``--max-body-bytes``."""


class BodyTimeout(HttpRefusal):
    """A body that did not arrive within ``--body-timeout``."""


class NoSuchRoute(HttpRefusal):
    """A path no route serves."""


class MethodNotAllowed(HttpRefusal):
    """A route asked with a method it does not take."""


@dataclass(frozen=True, slots=True)
class ErrorKind:
    status: int
    openai_type: str
    tei_type: str


# The one table. Looked up along the exception's MRO, so subclasses may have
# rows of their own and otherwise inherit their parent's.
ERROR_STATUS: Mapping[type[EmbedloomError], ErrorKind] = {
    InputTooLong: ErrorKind(413, "invalid_request_error", "validation"),
    TooManyInputs: ErrorKind(413, "invalid_request_error", "validation"),
    InvalidInput: ErrorKind(422, "invalid_request_error", "validation"),
    ModelNotFound: ErrorKind(404, "not_found_error", "not_found"),
    # TEI answers 424, its status for a failed inference too; 400 says the request
    # is what is wrong (docs/compatibility.md).
    NotThisTask: ErrorKind(400, "invalid_request_error", "validation"),
    ModelFetchFailed: ErrorKind(503, "service_unavailable", "unhealthy"),
    Overloaded: ErrorKind(429, "rate_limit_error", "overloaded"),
    Unavailable: ErrorKind(503, "service_unavailable", "unhealthy"),
    DeadlineExceeded: ErrorKind(504, "timeout_error", "timeout"),
    BackendError: ErrorKind(500, "server_error", "backend"),
    Unauthorized: ErrorKind(401, "invalid_request_error", "unauthorized"),
    UnsupportedMediaType: ErrorKind(415, "invalid_request_error", "validation"),
    BodyTooLarge: ErrorKind(413, "invalid_request_error", "validation"),
    BodyTimeout: ErrorKind(408, "invalid_request_error", "validation"),
    NoSuchRoute: ErrorKind(404, "invalid_request_error", "http"),
    MethodNotAllowed: ErrorKind(405, "invalid_request_error", "http"),
    HttpRefusal: ErrorKind(400, "invalid_request_error", "http"),
    EmbedloomError: ErrorKind(500, "server_error", "internal"),
}

# Starlette's own refusals (routing), by status.
_REFUSALS_BY_STATUS: Mapping[int, type[HttpRefusal]] = {
    404: NoSuchRoute,
    405: MethodNotAllowed,
    413: BodyTooLarge,
}


def kind_of(error: EmbedloomError) -> ErrorKind:
    for cls in type(error).__mro__:
        kind = ERROR_STATUS.get(cls)
        if kind is not None:
            return kind
    raise AssertionError("EmbedloomError has a row")  # pragma: no cover


def refusal_for_status(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> HttpRefusal:
    """Starlette's ``HTTPException`` as one of ours, so it goes through the table."""
    return _REFUSALS_BY_STATUS.get(status, HttpRefusal)(message, headers=headers)


def dialect_for(path: str) -> Dialect:
    return next(dialect for prefix, dialect in ROUTE_DIALECTS if path.startswith(prefix))


def response_for(error: EmbedloomError, path: str) -> Response:
    """The answer to ``error`` on ``path``: its status from the table, its body in
    the route's dialect, with Retry-After when it says when to try again."""
    kind = kind_of(error)
    headers = dict(error.headers) if isinstance(error, HttpRefusal) else {}
    if isinstance(error, Overloaded | ModelLoading):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    body: object
    dialect = dialect_for(path)
    if dialect == "cohere":
        scope = current_scope()
        body = {"id": scope.request_id if scope else None, "message": error.message}
    elif dialect == "openai":
        param = getattr(error, "param", None)
        body = {
            "error": {
                "message": error.message,
                "type": kind.openai_type,
                "param": param,
                "code": None,
            }
        }
    else:
        body = {"error": error.message, "error_type": kind.tei_type}
    return Response(
        orjson.dumps(body),
        status_code=kind.status,
        media_type="application/json",
        headers=headers,
    )
