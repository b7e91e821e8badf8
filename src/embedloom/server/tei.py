"""``POST /embed`` — the text-embeddings-inference API."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from embedloom.errors import TooManyInputs
from embedloom.server.schemas import EmbedRequest, parse_body
from embedloom.server.state import server_state, unless_disconnected

__all__ = ["router"]

router = APIRouter()


@router.post(
    "/embed",
    response_model=None,
    summary="Embed inputs (TEI-compatible)",
    responses={200: {"model": list[list[float]]}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EmbedRequest.model_json_schema()}},
        }
    },
)
async def embed(request: Request) -> Response:
    state = server_state(request)
    body = parse_body(await request.body(), EmbedRequest)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    if len(texts) > state.settings.max_client_batch_size:
        raise TooManyInputs(count=len(texts), limit=state.settings.max_client_batch_size)
    truncate = state.settings.auto_truncate if body.truncate is None else body.truncate
    result = await unless_disconnected(
        request,
        state.engine.embed(
            texts, normalize=body.normalize, truncate=truncate, dimensions=body.dimensions
        ),
    )
    return Response(
        orjson.dumps(result.vectors, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
    )
