"""What every route needs: the models (a registry of engines), the settings, and a way
to await an engine that gives up when the client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from embedloom.config import Settings
from embedloom.engine import Embeddings, Engine
from embedloom.errors import TooManyInputs
from embedloom.quantize import Calibrations, EmbeddingType, encode_vectors
from embedloom.registry import Registry
from embedloom.scope import Priority, current_scope
from embedloom.server.metrics import ServerMetrics

__all__ = [
    "ClientDisconnected",
    "EmbedAnswer",
    "EmbedCall",
    "ServerState",
    "embed_for_request",
    "json_answer",
    "json_body",
    "on_model",
    "quantization_ranges",
    "request_id",
    "server_state",
    "timing_headers",
    "unless_disconnected",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServerState:
    registry: Registry
    settings: Settings
    metrics: ServerMetrics
    calibrations: Calibrations = field(default_factory=Calibrations)

    def truncates(self, asked: bool | None) -> bool:
        """Whether to cut over-long inputs: as the request asks, else ``--auto-truncate``."""
        return self.settings.auto_truncate if asked is None else asked


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.embedloom
    return state


@dataclass(frozen=True, slots=True)
class EmbedCall:
    """What an embedding route asks for, once its body is parsed (in its dialect's
    words, mapped to these)."""

    inputs: list[str] | list[list[int]]
    model: str | None = None
    normalize: bool | None = None
    truncate: bool | None = None  # None: the server's --auto-truncate
    dimensions: int | None = None
    prompt_name: str | None = None
    # Else the first of these the model has a prompt by (Cohere's input_type).
    prompt_candidates: tuple[str, ...] = ()
    truncation_direction: Literal["right", "left"] = "right"
    max_tokens: int | None = None
    priority: Priority | None = None
    encodings: tuple[EmbeddingType, ...] = ("float",)


@dataclass(frozen=True, slots=True)
class EmbedAnswer:
    result: Embeddings
    # One entry per asked encoding: each input's vector in it.
    encoded: dict[EmbeddingType, list[object]]
    # The prompt asked for by name or found among the candidates (None: neither),
    # and the model's prompt names, listed for a message.
    prompt_name: str | None = None
    model_prompts: str = ""


async def on_model(
    request: Request,
    model: str | None,
    count: int,
    work: Callable[[Engine, float | None], Awaitable[T]],
) -> T:
    """What every route that runs a model does once its body is parsed: enforce the
    per-request limit on ``count`` inputs, and run ``work(engine, default_timeout)``
    on model ``model``'s engine (None: the default model's) for as long as the
    client is still there; ``default_timeout`` is the server's default deadline, or
    None when the client sent its own."""
    state = server_state(request)
    limit = state.settings.max_client_batch_size
    if count > limit:
        raise TooManyInputs(count=count, limit=limit)
    scope = current_scope()
    timeout = state.settings.request_timeout or None
    if scope is not None and scope.deadline is not None:
        timeout = None

    async def run() -> T:
        async with state.registry.use(model) as engine:
            return await work(engine, timeout)

    return await unless_disconnected(request, run())


async def embed_for_request(request: Request, call: EmbedCall) -> EmbedAnswer:
    """An embedding route's work once the body is parsed (``on_model``): embed with
    the server's truncation default, and encode the vectors as asked."""
    state = server_state(request)

    async def embed(engine: Engine, default_timeout: float | None) -> EmbedAnswer:
        prompts = engine.prompts.prompts
        prompt_name = call.prompt_name or next(
            (name for name in call.prompt_candidates if name in prompts), None
        )
        result = await engine.embed(
            call.inputs,
            normalize=call.normalize,
            truncate=state.truncates(call.truncate),
            dimensions=call.dimensions,
            timeout=default_timeout,
            prompt_name=prompt_name,
            truncation_direction=call.truncation_direction,
            max_tokens=call.max_tokens,
            priority=call.priority,
        )
        ranges = await quantization_ranges(
            state, engine, call.encodings, result.vectors.shape[1], call.normalize
        )
        encoded = {kind: encode_vectors(result.vectors, kind, ranges) for kind in call.encodings}
        return EmbedAnswer(result, encoded, prompt_name, engine.prompts.listed())

    return await on_model(request, call.model, len(call.inputs), embed)


async def quantization_ranges(
    state: ServerState,
    engine: Engine,
    encodings: Iterable[EmbeddingType],
    width: int,
    normalize: bool | None,
) -> npt.NDArray[np.float32] | None:
    """The calibrated int8/uint8 ranges for vectors of ``width`` dimensions,
    normalised as asked (None: as the model does); None when no encoding needs them."""
    if not {"int8", "uint8"} & set(encodings):
        return None
    calibration = await state.calibrations.of(engine)
    return calibration.ranges(
        width, engine.model_info.normalizes if normalize is None else normalize
    )


def request_id() -> str:
    """The current request's id (its scope's), as the bodies of Cohere-like APIs carry it."""
    scope = current_scope()
    return scope.request_id if scope else ""


def timing_headers(result: Embeddings) -> dict[str, str]:
    """TEI's timing headers, in whole milliseconds as TEI sends them."""
    tokenize, queue, inference = (
        result.tokenize_seconds,
        result.queue_seconds,
        result.inference_seconds,
    )
    return {
        "x-compute-time": _ms(tokenize + queue + inference),
        "x-compute-tokens": str(result.prompt_tokens),
        "x-tokenization-time": _ms(tokenize),
        "x-queue-time": _ms(queue),
        "x-inference-time": _ms(inference),
    }


def json_answer(payload: object, result: Embeddings | None = None) -> Response:
    """A JSON response (numpy arrays as lists), with the timing headers of ``result``."""
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers=timing_headers(result) if result is not None else None,
    )


def token_usage(result: Embeddings) -> dict[str, int]:
    """The ``usage`` of an answer, as OpenAI words it (every token is a prompt token)."""
    return {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}


def _ms(seconds: float) -> str:
    return str(round(seconds * 1000))


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body the route parses itself (see ``schemas.parse_body``), nested
    models written in place: pydantic's ``#/$defs/…`` references would point into
    the OpenAPI document's root, where nothing is."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref", "")
            if reference.startswith("#/$defs/"):
                return inline(definitions[reference.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline(schema)}},
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
