"""Domain errors → HTTP: the one table, and the two error body shapes.

The OpenAI routes (``/v1/…``) answer in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``; every other route in
TEI's, ``{"error": "...", "error_type": "..."}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

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
    Overloaded,
    TooManyInputs,
    Unavailable,
)

__all__ = ["ERROR_STATUS", "ErrorKind", "error_response", "response_for"]


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
    ModelFetchFailed: ErrorKind(503, "service_unavailable", "unhealthy"),
    Overloaded: ErrorKind(429, "rate_limit_error", "overloaded"),
    Unavailable: ErrorKind(503, "service_unavailable", "unhealthy"),
    DeadlineExceeded: ErrorKind(504, "timeout_error", "timeout"),
    BackendError: ErrorKind(500, "server_error", "backend"),
    EmbedloomError: ErrorKind(500, "server_error", "internal"),
}


def kind_of(error: EmbedloomError) -> ErrorKind:
    for cls in type(error).__mro__:
        kind = ERROR_STATUS.get(cls)
        if kind is not None:
            return kind
    raise AssertionError("EmbedloomError has a row")  # pragma: no cover


def response_for(error: EmbedloomError, path: str) -> Response:
    kind = kind_of(error)
    headers = {}
    if isinstance(error, Overloaded | ModelLoading):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return error_response(
        path,
        kind.status,
        error.message,
        openai_type=kind.openai_type,
        tei_type=kind.tei_type,
        param=getattr(error, "param", None),
        headers=headers,
    )


def error_response(
    path: str,
    status: int,
    message: str,
    *,
    openai_type: str,
    tei_type: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body: object
    if path.startswith("/v1/"):
        body = {"error": {"message": message, "type": openai_type, "param": param, "code": None}}
    else:
        body = {"error": message, "error_type": tei_type}
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )
