"""Server pieces in-process: the error table, the 500 path, and disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI

from embedloom import Engine, Settings
from embedloom.errors import (
    BackendError,
    EmbedloomError,
    InputTooLong,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    TooManyInputs,
    Unavailable,
)
from embedloom.server import create_app
from embedloom.server.errors import ERROR_STATUS, kind_of, response_for
from tests.fakes import FakeBackend, inline


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidInput("bad"), 422),
        (InputTooLong(index=0, max_tokens=8), 413),
        (TooManyInputs(count=9, limit=8), 413),
        (ModelNotFound("m"), 404),
        (Overloaded("full", retry_after=2.2), 429),
        (Unavailable("draining"), 503),
        (BackendError("boom"), 500),
        (EmbedloomError("other"), 500),
    ],
)
def test_one_table_maps_every_domain_error(error: EmbedloomError, status: int) -> None:
    assert kind_of(error).status == status


def test_every_error_class_has_a_row_or_a_parent_with_one() -> None:
    from embedloom import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert any(base in ERROR_STATUS for base in cls.__mro__), name


def test_overloaded_says_when_to_retry() -> None:
    reply = response_for(Overloaded("full", retry_after=2.2), "/v1/embeddings")
    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "3"


@dataclass
class Served:
    client: httpx.AsyncClient
    engine: Engine
    app: FastAPI


@asynccontextmanager
async def serving(backend: FakeBackend, **settings: object) -> AsyncIterator[Served]:
    """The real app over an engine on the fake backend, through httpx's ASGI transport."""
    engine = Engine(
        lambda: backend,
        settings=Settings(**settings),  # type: ignore[arg-type]
        offload=inline,
    )
    backend.release()
    await engine.start()
    backend.wait_entered()
    app = create_app(engine.settings, engine)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Served(client, engine, app)
    finally:
        backend.release(100)
        await engine.close(grace=5)


async def test_health_is_503_once_draining() -> None:
    backend = FakeBackend()
    async with serving(backend) as served:
        client = served.client
        assert (await client.get("/health")).status_code == 200
        served.engine.begin_drain()
        reply = await client.get("/health")
        assert reply.status_code == 503
        assert reply.json()["error_type"] == "unhealthy"
        refused = await client.post("/v1/embeddings", json={"input": "late"})
        assert refused.status_code == 503
        assert "draining" in refused.json()["error"]["message"]


async def test_a_client_that_leaves_costs_no_model_time() -> None:
    """A request whose client disconnects is cancelled in the engine."""
    backend = FakeBackend(hold_batches=True)
    async with serving(backend) as served:
        client, engine = served.client, served.engine
        busy = asyncio.create_task(client.post("/embed", json={"inputs": "first"}))
        await asyncio.to_thread(backend.wait_entered)
        tokenized = asyncio.Event()
        backend.on_tokenize = lambda texts: tokenized.set()
        leaving = asyncio.create_task(client.post("/embed", json={"inputs": ["a", "b"]}))
        await tokenized.wait()  # tokenising inline: the inputs are queued in the same step
        assert engine.statistics().queued_inputs == 2
        # The ASGI transport runs the app in the caller's task: cancelling the
        # call is the client going away mid-request.
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert engine.statistics().inputs_dropped == 2
        backend.release()
        assert (await busy).status_code == 200
    assert ["a", "b"] not in backend.batches


async def test_unexpected_exception_is_a_json_500_with_the_request_id() -> None:
    backend = FakeBackend()
    async with serving(backend) as served:
        client = served.client

        async def explode() -> None:
            raise RuntimeError("secret internal detail at /srv/models/x")

        served.app.add_api_route("/v1/explode", explode, methods=["POST"])
        reply = await client.post("/v1/explode", headers={"x-request-id": "req-500"})
        assert (await client.get("/health")).status_code == 200, "the server carries on"
    assert reply.status_code == 500
    assert reply.headers["x-request-id"] == "req-500"
    error = reply.json()["error"]
    assert "req-500" in error["message"]
    assert "secret" not in reply.text
    assert error["type"] == "server_error"


async def test_a_disconnect_sets_the_request_scopes_cancellation_signal() -> None:
    from typing import cast

    from starlette.requests import Request

    from embedloom.scope import request_scope
    from embedloom.server.state import ClientDisconnected, unless_disconnected

    class Gone:
        async def receive(self) -> dict[str, str]:
            return {"type": "http.disconnect"}

    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with request_scope("gone") as scope, pytest.raises(ClientDisconnected):
        await unless_disconnected(cast(Request, Gone()), never)
    assert scope.cancelled.is_set()  # work in other threads can see the caller left
    assert never.cancelled()
