"""The listening socket, bound before anything slow happens.

A port already in use used to be found by uvicorn after the model had loaded
(tens of seconds), and reported as its own exit 3. Binding first gives the
user one clear line at once, and handing that very socket to the server
(uvicorn's ``sockets=``, gunicorn's ``fd://``) leaves no window in which
another process could take the port between a check and the real bind.
"""

from __future__ import annotations

import errno
import socket

from embedloom.errors import AddressUnavailable

__all__ = ["bind_listener", "check_address_free"]

# uvicorn's and gunicorn's own default: connections the kernel queues before accept.
_BACKLOG = 2048


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening; raises ``AddressUnavailable``
    naming the address and the fix."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise AddressUnavailable(
            f"cannot listen on {host}:{port}: {host!r} is not an address of this machine "
            f"({exc.strerror}); pass --host with an IP address such as 127.0.0.1 or 0.0.0.0"
        ) from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # As uvicorn and gunicorn do: a restart may reuse a port whose old
        # connections linger in TIME_WAIT; a live listener still refuses the bind.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise AddressUnavailable(_explain(host, port, exc)) from exc
    return sock


def check_address_free(host: str, port: int) -> None:
    """Bind and release ``host:port`` at once, for servers that bind it themselves
    later (Ray Serve's proxy): not race-free, but the usual mistake — a port
    already taken — is still one clear line before the cluster starts."""
    bind_listener(host, port).close()


def _explain(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is already in use; stop what holds it, "
            "or pass another --port (--port 0 takes any free one)"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {where}: permission denied (ports below 1024 need root); "
            "pass --port 1024 or above"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {where}: {host} is not an address of this machine; "
            "pass --host 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        )
    return f"cannot listen on {where}: {exc.strerror}"
