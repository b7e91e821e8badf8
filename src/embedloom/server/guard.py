"""What a request must get past before any route sees it: the API key, the content type,
the body size limit and the body read timeout. Also the transport limits given to
uvicorn, so both ways of serving (one process, or gunicorn workers) set them alike.

A plain ASGI middleware inside ``RequestContextMiddleware``, so refusals still
get a request id, an access-log line and a metric. The body is checked as it
arrives: a declared ``Content-Length`` over the limit is refused before any of
the body is read; a chunked body is cut off as soon as it passes the limit.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedloom.config import Settings, SettingsError
from embedloom.server.docs import ASSETS_URL, DOCS_URL, OPENAPI_URL
from embedloom.server.errors import (
    BodyTimeout,
    BodyTooLarge,
    HttpRefusal,
    Unauthorized,
    UnsupportedMediaType,
    response_for,
)

__all__ = ["RequestGuard", "load_api_keys", "uvicorn_limits", "warn_if_exposed"]

logger = logging.getLogger(__name__)

# Routes a load balancer or orchestrator probes without credentials, and the API's
# description (see server/docs.py: why it needs no key).
_OPEN_PATHS = frozenset({"/health", DOCS_URL, OPENAPI_URL})
# JSON, and curl's default for ``-d``: ``curl -d '{...}'`` sends a JSON body labelled
# as a form, and refusing the commonest way to try an API helps no one.
_JSON_TYPES = frozenset({"application/json", "application/x-www-form-urlencoded"})
# Seconds an idle keep-alive connection stays open between requests (uvicorn's
# default too, set here so it is a decision rather than an accident).
KEEP_ALIVE_SECONDS = 5
# The most bytes of an incomplete request head (request line + headers) h11 holds.
_MAX_HEAD_BYTES = 16 * 1024


def uvicorn_limits(settings: Settings) -> dict[str, object]:
    """Transport limits for ``uvicorn.Config``: idle keep-alive, connections, head size.

    Past ``max_connections`` open connections uvicorn itself answers 503 (a plain-text
    body: it never reaches the app); the engine's admission answers 429 long before
    that under ordinary overload.
    """
    return {
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": _MAX_HEAD_BYTES,
    }


def load_api_keys(settings: Settings) -> tuple[bytes, ...]:
    """The keys from ``--api-key`` and ``--api-key-file`` (one per line; # comments)."""
    keys = list(settings.api_key)
    if settings.api_key_file:
        path = Path(settings.api_key_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SettingsError(f"api_key_file: cannot read {path}: {exc.strerror}") from exc
        keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not keys:
            raise SettingsError(f"api_key_file: {path} holds no key")
    return tuple(key.encode() for key in keys)


def warn_if_exposed(settings: Settings) -> None:
    """Warn when bound beyond this machine with no API key."""
    if settings.api_key or settings.api_key_file or _is_loopback(settings.host):
        return
    logger.warning(
        "serving on %s without an API key: anyone who can reach this address can use the "
        "model; set --api-key (or bind 127.0.0.1 behind a proxy that authenticates)",
        settings.host,
    )


def _is_open(path: str) -> bool:
    return path in _OPEN_PATHS or path.startswith(ASSETS_URL + "/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RequestGuard:
    def __init__(self, app: ASGIApp, settings: Settings, api_keys: tuple[bytes, ...]) -> None:
        self._app = app
        self._keys = api_keys
        self._max_body = settings.max_body_bytes
        self._body_timeout = settings.body_timeout or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await response_for(refusal, scope["path"])(scope, receive, send)
            return
        await self._app(scope, self._limited(receive), send)

    def _refusal(self, scope: Scope) -> HttpRefusal | None:
        headers = _headers(scope)
        if self._keys and not _is_open(scope["path"]) and not self._authorised(headers):
            return Unauthorized(
                "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return None
        content_type = headers.get(b"content-type")
        if content_type is not None:
            media_type = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
            if media_type not in _JSON_TYPES and not media_type.endswith("+json"):
                return UnsupportedMediaType(
                    f"the request body must be JSON (Content-Type: application/json), "
                    f"not {media_type or 'empty'}"
                )
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            return BodyTooLarge(self._too_large(int(declared)))
        return None

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, offered = headers.get(b"authorization", b"").strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        offered = offered.strip()
        # Compare with every key, whatever matches: the time taken says nothing
        # about which key, or how much of one, was right.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(offered, key)
        return matched

    def _too_large(self, size: int | None) -> str:
        amount = f"{size} bytes" if size is not None else "more"
        return (
            f"the request body is too large: {amount}, the limit is {self._max_body} bytes "
            "(--max-body-bytes)"
        )

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that enforces the size limit and the read timeout on the body,
        then passes later messages (the disconnect) through untouched."""
        received = 0
        body_done = False
        # One deadline for the whole body: a client trickling a byte at a time
        # gets no more time than one sending nothing.
        loop = asyncio.get_running_loop()
        deadline = None if self._body_timeout is None else loop.time() + self._body_timeout

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(
                    f"the request body did not arrive within {self._body_timeout:g}s "
                    "(--body-timeout)",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max_body:
                    raise BodyTooLarge(self._too_large(None), headers={"Connection": "close"})
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        return limited_receive


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return dict(scope.get("headers", ()))
