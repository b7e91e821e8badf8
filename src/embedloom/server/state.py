"""What every route needs: the engine, the settings, and a way to await the engine that
gives up when the client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request

from embedloom.config import Settings
from embedloom.engine import Engine
from embedloom.server.metrics import ServerMetrics

__all__ = ["ClientDisconnected", "ServerState", "server_state", "unless_disconnected"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServerState:
    engine: Engine
    settings: Settings
    metrics: ServerMetrics


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.embedloom
    return state


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first.

    Cancelling reaches the engine, which drops the request's queued inputs, so a
    client that gave up costs no model time. Either way, ``work`` has finished
    (and cleaned up) before this returns or raises.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        await _cancel_and_wait(task, watcher)
        raise
    watcher.cancel()
    if task.done():
        return task.result()
    await _cancel_and_wait(task)
    raise ClientDisconnected()


async def _cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the next message the server gives is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
