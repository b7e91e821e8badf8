"""What every route needs: the models (a registry of engines), the settings, and a way
to await an engine that gives up when the client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request

from embedloom.config import Settings
from embedloom.engine import Embeddings
from embedloom.errors import TooManyInputs
from embedloom.registry import Registry
from embedloom.scope import current_scope
from embedloom.server.metrics import ServerMetrics

__all__ = [
    "ClientDisconnected",
    "ServerState",
    "embed_for_request",
    "json_body",
    "server_state",
    "unless_disconnected",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServerState:
    registry: Registry
    settings: Settings
    metrics: ServerMetrics


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.embedloom
    return state


async def embed_for_request(
    request: Request,
    texts: str | list[str],
    *,
    normalize: bool | None = None,
    truncate: bool | None = None,
    dimensions: int | None = None,
    model: str | None = None,
) -> Embeddings:
    """What both embedding routes do once the body is parsed: enforce the per-request
    limit, apply the server's truncation default, and run model ``model``'s engine
    (None: the default model's) for as long as the client is still there."""
    state = server_state(request)
    batch = [texts] if isinstance(texts, str) else texts
    limit = state.settings.max_client_batch_size
    if len(batch) > limit:
        raise TooManyInputs(count=len(batch), limit=limit)
    scope = current_scope()
    # The server's default deadline, unless the client sent its own.
    default_timeout = state.settings.request_timeout or None

    async def embed() -> Embeddings:
        async with state.registry.use(model) as engine:
            return await engine.embed(
                batch,
                normalize=normalize,
                truncate=state.settings.auto_truncate if truncate is None else truncate,
                dimensions=dimensions,
                timeout=default_timeout if scope is None or scope.deadline is None else None,
            )

    return await unless_disconnected(request, embed())


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body the route parses itself (see ``schemas.parse_body``)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


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
    scope = current_scope()
    if scope is not None:
        scope.cancel()  # for work in other threads that checks it
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
