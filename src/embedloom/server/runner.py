"""Running the app under uvicorn, with a graceful stop on SIGTERM.

On SIGTERM (or Ctrl-C) the engine stops admitting at once — requests that
arrive on open connections get 503 — while uvicorn stops accepting
connections and waits for admitted requests to finish; then the process
exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
from types import FrameType

import uvicorn

from embedloom.config import Settings
from embedloom.registry import Registry
from embedloom.server.app import create_app
from embedloom.server.guard import uvicorn_limits
from embedloom.server.listen import bind_listener

__all__ = ["serve"]

logger = logging.getLogger(__name__)


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, registry: Registry) -> None:
        super().__init__(config)
        self._registry = registry
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            # One line with the real address (the port may have been 0), for people
            # and for tests that wait for readiness by reading the log.
            for server in self.servers:
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    logger.info("serving on http://%s:%d", host, port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler may interrupt the loop mid-step: hand the drain to the
        # loop rather than touching the engine from here.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._registry.begin_drain)
        super().handle_exit(sig, frame)


def serve(settings: Settings, *, listener: socket.socket | None = None) -> None:
    """Serve ``settings``' models on ``settings.host:settings.port`` until SIGTERM/SIGINT.

    ``listener``: the socket, already bound there (``listen.bind_listener``);
    bound here first if not given, so an address in use fails at once
    (``AddressUnavailable``), before the model loads."""
    listener = listener or bind_listener(settings.host, settings.port)
    registry = Registry(settings)
    app = create_app(settings, registry=registry)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # logging is configured by embedloom.log
        access_log=False,  # the request middleware writes the access log, with request ids
        timeout_graceful_shutdown=math.ceil(settings.graceful_shutdown_seconds),
        server_header=False,
        **uvicorn_limits(settings),  # type: ignore[arg-type]
    )
    server = _DrainingServer(config, registry)
    # uvicorn re-raises the stop signal once it has shut down gracefully; the
    # default action for it would end the process with -SIGTERM instead of 0.
    previous = {
        sig: signal.signal(sig, _absorb_after_graceful_stop)
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        server.run(sockets=[listener])
    finally:
        listener.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise SystemExit(3)


def _absorb_after_graceful_stop(sig: int, frame: FrameType | None) -> None:
    logger.info("stopped after %s", signal.Signals(sig).name)
