"""The load generator's HTTP/1.1 client: one keep-alive connection per client on
asyncio streams, and nothing else. On a machine of a few cores a heavier client
(httpx, aiohttp) would take the CPU the server is being measured on; this one
parses a status line and two headers per answer."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Answer", "Connection", "Endpoint"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go: scheme, host and port of a URL, and its path; ``label``
    names the server in reports (``NAME=URL``)."""

    host: str
    port: int
    tls: bool
    path: str
    label: str = ""

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        label = ""
        name, sep, rest = url.partition("=")
        if sep and "://" not in name:
            label, url = name, rest
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        tls = parts.scheme == "https"
        return cls(parts.hostname, parts.port or (443 if tls else 80), tls, parts.path, label)

    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    # Lower-cased names of the few headers the dialects read (TEI's token count).
    headers: dict[str, str]


_KEPT_HEADERS = frozenset({"content-length", "connection", "x-compute-tokens", "retry-after"})


class _ClosedWhileIdle(Exception):
    """The connection ended before any byte of an answer."""


class Connection:
    """One keep-alive connection, opened on first use and reopened after an error."""

    def __init__(self, endpoint: Endpoint, headers: dict[str, str] | None = None) -> None:
        self._endpoint = endpoint
        self._extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """Open the connection now (``OSError`` if the server refuses it)."""
        if self._writer is None:
            context = ssl.create_default_context() if self._endpoint.tls else None
            self._reader, self._writer = await asyncio.open_connection(
                self._endpoint.host, self._endpoint.port, ssl=context
            )

    async def request(
        self, method: str, path: str, body: bytes = b"", *, close: bool = False
    ) -> Answer:
        """One exchange (``close``: ask the server to close the connection after it).
        A broken connection raises ``ConnectionError`` (and is closed, so the next
        request opens a new one). A kept-alive connection the server had closed while
        it sat idle (no byte of an answer came back) is reopened and the request sent
        once more, as HTTP clients do: the server never read it."""
        for attempt in range(2):
            reused = self._writer is not None
            try:
                return await self._exchange(method, path, body, close)
            except _ClosedWhileIdle as exc:
                await self.close()
                if not reused or attempt:
                    raise ConnectionError(f"{method} {path}: closed without an answer") from exc
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                await self.close()
                raise ConnectionError(f"{method} {path}: {exc or type(exc).__name__}") from exc
        raise AssertionError("unreachable")

    async def _exchange(self, method: str, path: str, body: bytes, close: bool) -> Answer:
        await self.connect()
        assert self._reader is not None
        assert self._writer is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._endpoint.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "")
            + f"{self._extra}\r\n"
        ).encode()
        try:
            self._writer.write(head + body)
            status_line = await self._reader.readline()
        except ConnectionResetError as exc:
            raise _ClosedWhileIdle from exc
        if not status_line:
            raise _ClosedWhileIdle
        status = int(status_line.split()[1])
        headers = {}
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if (name := name.strip().lower()) in _KEPT_HEADERS:
                headers[name] = value.strip()
        if "content-length" not in headers:
            # Chunked answers are not sent by the servers this measures; refuse to guess.
            raise ValueError("an answer without Content-Length")
        payload = await self._reader.readexactly(int(headers["content-length"]))
        if close or headers.get("connection", "").lower() == "close":
            await self.close()
        return Answer(status, payload, headers)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._reader = None
