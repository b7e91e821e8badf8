"""``POST /embed_stream`` — a long list in, NDJSON lines out as they are computed.

The body is TEI's ``/embed`` body, with up to ``--max-stream-inputs`` inputs
(far above the normal per-request limit). Each line is
``{"index": i, "embedding": [...]}``, in input order. The engine runs the list
a few batches at a time (``Engine.embed_stream``), so the server holds a few
batches of this request at once, whatever its length, and other requests
interleave with it. An error before the first line is an ordinary error
response (status and JSON body); an error after it ends the stream with one
line ``{"error": ..., "error_type": ...}``. A client that disconnects stops the
stream: its chunks not yet run are dropped, counted in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from embedloom.backends.base import ModelInput
from embedloom.errors import EmbedloomError, TooManyInputs
from embedloom.quantize import encode_vectors
from embedloom.scope import current_scope
from embedloom.server.errors import EMBEDDING_ERRORS, error_responses, kind_of
from embedloom.server.schemas import EmbedRequest, parse_body
from embedloom.server.state import (
    ServerState,
    json_body,
    quantization_ranges,
    server_state,
    unless_disconnected,
)

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter()

_Item = tuple[int, object]


@router.post(
    "/embed_stream",
    response_model=None,
    summary="Embed a long list, streamed back as NDJSON lines in input order",
    responses={
        200: {"content": {"application/x-ndjson": {}}},
        **error_responses("/embed_stream", EMBEDDING_ERRORS),
    },
    openapi_extra=json_body(EmbedRequest),
)
async def embed_stream(request: Request) -> Response:
    state = server_state(request)
    body = parse_body(await request.body(), EmbedRequest)
    inputs = body.inputs
    if len(inputs) > state.settings.max_stream_inputs:
        raise TooManyInputs(count=len(inputs), limit=state.settings.max_stream_inputs)
    items = _leased_stream(
        state,
        body,
        inputs,
        normalize=body.normalize,
        truncate=state.truncates(body.truncate),
        dimensions=body.dimensions,
        prompt_name=body.prompt_name,
        truncation_direction=body.truncation_direction,
    )
    # The first results decide the status: errors found by then (an input too
    # long in the first chunk, overload) get their ordinary status and body.
    try:
        first = await unless_disconnected(request, anext(items))
    except BaseException:
        await items.aclose()
        raise
    lines_per_send = state.settings.max_batch_size
    return StreamingResponse(
        _lines(first, items, lines_per_send), media_type="application/x-ndjson"
    )


async def _leased_stream(
    state: ServerState, body: EmbedRequest, inputs: Sequence[ModelInput], **options: Any
) -> AsyncGenerator[_Item, None]:
    """The engine's stream, with the model held loaded until the stream is closed,
    each vector encoded as ``body.embedding_type`` asks."""
    kind = body.embedding_type
    async with (
        state.registry.use(body.model) as engine,
        contextlib.aclosing(engine.embed_stream(inputs, **options)) as items,
    ):
        width = body.dimensions or engine.model_info.dimensions
        ranges = await quantization_ranges(state, engine, (kind,), width, body.normalize)
        async for index, vector in items:
            if kind == "float":
                yield index, vector
            else:
                (encoded,) = encode_vectors(vector[np.newaxis, :], kind, ranges)
                yield index, encoded


async def _lines(
    first: _Item, items: AsyncGenerator[_Item, None], per_send: int
) -> AsyncIterator[bytes]:
    """NDJSON, one send per ``per_send`` lines (a chunk's worth arrives at once)."""
    buffered = [_line(first)]
    sent = 1
    try:
        async for item in items:
            buffered.append(_line(item))
            sent += 1
            if len(buffered) >= per_send:
                yield b"".join(buffered)
                buffered = []
    except asyncio.CancelledError:
        logger.info("the client left the stream after %d results; the rest is dropped", sent)
        scope = current_scope()
        if scope is not None:
            scope.cancel()
        raise
    except EmbedloomError as exc:
        logger.warning("stream ended early: %s", exc.message)
        buffered.append(
            orjson.dumps({"error": exc.message, "error_type": kind_of(exc).tei_type}) + b"\n"
        )
    finally:
        await items.aclose()
    if buffered:
        yield b"".join(buffered)


def _line(item: _Item) -> bytes:
    index, vector = item
    return (
        orjson.dumps({"index": index, "embedding": vector}, option=orjson.OPT_SERIALIZE_NUMPY)
        + b"\n"
    )
