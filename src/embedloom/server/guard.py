"""What a request must get past before any route sees it: the API key, the content type,
the body size limit and the body read timeout; and whose request it is (its tenant).
Also the transport limits given to uvicorn, so both ways of serving (one process,
or gunicorn workers) set them alike.

A plain ASGI middleware inside ``RequestContextMiddleware``, so refusals still
get a request id, an access-log line and a metric. The body is checked as it
arrives: a declared ``Content-Length`` over the limit is refused before any of
the body is read; a chunked body is cut off as soon as it passes the limit.

The tenant (the unit of fair shares in the engine) is the header named by
``--tenant-header`` when that is configured (a trusted proxy in front sets it),
else the name of the API key that matched, else ``default``. A key's value is
never a tenant's name: a key file line ``NAME WEIGHT KEY`` names it, and a bare
key is ``default``'s.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedloom.config import Settings, SettingsError
from embedloom.errors import InvalidInput
from embedloom.scope import DEFAULT_TENANT, tenant_scope
from embedloom.server.errors import (
    BodyTimeout,
    BodyTooLarge,
    HttpRefusal,
    Unauthorized,
    UnsupportedMediaType,
    response_for,
)

__all__ = [
    "ApiKey",
    "OpenRoutes",
    "RequestGuard",
    "load_api_keys",
    "uvicorn_limits",
    "warn_if_exposed",
]

logger = logging.getLogger(__name__)

# Routes a load balancer or orchestrator probes without credentials; the app adds
# its pages' (``OpenRoutes``).
_PROBES = frozenset({"/health"})
# JSON, and curl's default for ``-d``: ``curl -d '{...}'`` sends a JSON body labelled
# as a form, and refusing the commonest way to try an API helps no one.
_JSON_TYPES = frozenset({"application/json", "application/x-www-form-urlencoded"})
# Seconds an idle keep-alive connection stays open between requests (uvicorn's
# default too, set here so it is a decision rather than an accident).
KEEP_ALIVE_SECONDS = 5
# The most bytes of an incomplete request head (request line + headers) h11 holds.
_MAX_HEAD_BYTES = 16 * 1024
# Tenant names go into metric labels and logs: short and plain.
_TENANT_NAME = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


@dataclass(frozen=True, slots=True)
class OpenRoutes:
    """What needs no key besides the probes: paths (any method), paths for GET only,
    and path prefixes (static assets)."""

    paths: frozenset[str] = frozenset()
    get_paths: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    def admit(self, method: str, path: str) -> bool:
        return (
            path in _PROBES
            or path in self.paths
            or (method == "GET" and path in self.get_paths)
            or path.startswith(self.prefixes)
        )


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An accepted key, the tenant it serves and that tenant's weight in fair shares."""

    tenant: str
    weight: float
    key: bytes = field(repr=False)


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


def load_api_keys(settings: Settings) -> tuple[ApiKey, ...]:
    """The keys from ``--api-key`` (``default``'s) and ``--api-key-file``: one per line,
    ``KEY`` or ``NAME WEIGHT KEY``; ``#`` starts a comment line."""
    keys = [ApiKey(DEFAULT_TENANT, 1.0, key.encode()) for key in settings.api_key]
    if settings.api_key_file:
        path = Path(settings.api_key_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SettingsError(f"api_key_file: cannot read {path}: {exc.strerror}") from exc
        found = [
            _parse_key_line(line.split(), path, number)
            for number, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if not found:
            raise SettingsError(f"api_key_file: {path} holds no key")
        keys += found
    weights: dict[str, float] = {}
    for key in keys:
        if weights.setdefault(key.tenant, key.weight) != key.weight:
            raise SettingsError(
                f"api_key_file: tenant {key.tenant} is given two weights "
                f"({weights[key.tenant]:g} and {key.weight:g}); give each of its keys the same"
            )
    return tuple(keys)


def _parse_key_line(fields: list[str], path: Path, number: int) -> ApiKey:
    # The key itself is never quoted in a message: the line number says which.
    where = f"api_key_file: {path} line {number}"
    if len(fields) == 1:
        return ApiKey(DEFAULT_TENANT, 1.0, fields[0].encode())
    if len(fields) != 3:
        raise SettingsError(f"{where}: expected KEY or NAME WEIGHT KEY")
    name, weight_text, key = fields
    if not _TENANT_NAME.fullmatch(name):
        raise SettingsError(f"{where}: a tenant name is letters, digits and ._:- (64 at most)")
    try:
        weight = float(weight_text)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight) or weight <= 0:
        raise SettingsError(f"{where}: the weight must be a positive number")
    return ApiKey(name, weight, key.encode())


def warn_if_exposed(settings: Settings) -> None:
    """Warn when bound beyond this machine with no API key."""
    if settings.api_key or settings.api_key_file or _is_loopback(settings.host):
        return
    logger.warning(
        "serving on %s without an API key: anyone who can reach this address can use the "
        "model; set --api-key (or bind 127.0.0.1 behind a proxy that authenticates)",
        settings.host,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        api_keys: tuple[ApiKey, ...],
        open_routes: OpenRoutes = OpenRoutes(),
    ) -> None:
        self._app = app
        self._keys = api_keys
        self._open = open_routes
        self._weights = {key.tenant: key.weight for key in api_keys}
        self._tenant_header = settings.tenant_header.lower().encode() or None
        self._max_body = settings.max_body_bytes
        self._body_timeout = settings.body_timeout or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = _headers(scope)
        key = self._matching_key(headers) if self._keys else None
        refusal = self._refusal(scope, headers, key)
        if refusal is None:
            try:
                tenant, weight = self._tenant(headers, key)
            except InvalidInput as exc:
                refusal = exc
        if refusal is not None:
            await response_for(refusal, scope["path"])(scope, receive, send)
            return
        with tenant_scope(tenant, weight):
            await self._app(scope, self._limited(receive), send)

    def _tenant(self, headers: dict[bytes, bytes], key: ApiKey | None) -> tuple[str, float]:
        header = self._tenant_header
        named = headers.get(header) if header else None
        if header and named is not None:
            name = named.decode("latin-1").strip()
            if not _TENANT_NAME.fullmatch(name):
                raise InvalidInput(
                    f"the {header.decode()} header must name a tenant in letters, "
                    "digits and ._:- (64 at most)"
                )
            return name, self._weights.get(name, 1.0)
        if key is not None:
            return key.tenant, key.weight
        return DEFAULT_TENANT, 1.0

    def _refusal(
        self, scope: Scope, headers: dict[bytes, bytes], key: ApiKey | None
    ) -> HttpRefusal | InvalidInput | None:
        if self._keys and key is None and not self._open.admit(scope["method"], scope["path"]):
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

    def _matching_key(self, headers: dict[bytes, bytes]) -> ApiKey | None:
        scheme, _, offered = headers.get(b"authorization", b"").strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        offered = offered.strip()
        # Compare with every key, whatever matches: the time taken says nothing
        # about which key, or how much of one, was right.
        matched = None
        for key in self._keys:
            if hmac.compare_digest(offered, key.key) and matched is None:
                matched = key
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
