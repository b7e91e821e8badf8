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
from pydantic import BaseModel
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
    "EMBEDDING_ERRORS",
    "ERROR_STATUS",
    "ROUTE_DIALECTS",
    "TOKENIZER_ERRORS",
    "BodyTimeout",
    "BodyTooLarge",
    "ErrorKind",
    "HttpRefusal",
    "MethodNotAllowed",
    "NoSuchRoute",
    "Unauthorized",
    "UnsupportedMediaType",
    "error_responses",
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


# -- the error bodies and statuses in the OpenAPI document -------------------------


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    """An error under ``/v1/`` and ``/embeddings``."""

    error: OpenAIErrorDetail


class TEIErrorBody(BaseModel):
    """An error on TEI's routes and embedloom's own."""

    error: str
    error_type: str


class CohereErrorBody(BaseModel):
    """An error under ``/v2/``."""

    id: str | None
    message: str


_BODIES: Mapping[Dialect, type[BaseModel]] = {
    "openai": OpenAIErrorBody,
    "tei": TEIErrorBody,
    "cohere": CohereErrorBody,
}

_WHY: Mapping[int, str] = {
    400: "the model cannot do this task",
    401: "missing or wrong API key (with --api-key)",
    404: "no such model (the message lists the served ones)",
    408: "the body took longer than --body-timeout to arrive",
    413: "a body, a request or an input over its limit (truncation refused)",
    415: "a body that is not JSON",
    422: "a field missing, of the wrong type or value (the message names it)",
    429: "admission bound reached; Retry-After says when to try again",
    500: "the model failed on an input of this request",
    503: "starting, draining, a model loading or an inference thread being replaced",
    504: "the request's deadline passed",
}

EMBEDDING_ERRORS = (401, 404, 408, 413, 415, 422, 429, 500, 503, 504)
TOKENIZER_ERRORS = (401, 404, 408, 413, 415, 422, 503)


def error_responses(path: str, statuses: tuple[int, ...]) -> dict[int | str, dict[str, object]]:
    """The OpenAPI ``responses`` of ``statuses`` on ``path``, in its dialect's body."""
    body = _BODIES[dialect_for(path)]
    return {status: {"model": body, "description": _WHY[status]} for status in statuses}
