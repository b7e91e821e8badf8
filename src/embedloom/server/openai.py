"""``POST /v1/embeddings`` — the OpenAI embeddings API."""

from __future__ import annotations

import base64

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from embedloom.errors import ModelNotFound, TooManyInputs
from embedloom.server.schemas import EmbeddingRequest, EmbeddingResponse, parse_body
from embedloom.server.state import server_state, unless_disconnected

__all__ = ["router"]

router = APIRouter()


@router.post(
    "/v1/embeddings",
    response_model=None,
    summary="Create embeddings (OpenAI-compatible)",
    responses={200: {"model": EmbeddingResponse}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}},
        }
    },
)
async def create_embeddings(request: Request) -> Response:
    state = server_state(request)
    body = parse_body(await request.body(), EmbeddingRequest)
    info = state.engine.model_info
    if body.model is not None and body.model not in info.names:
        raise ModelNotFound(
            body.model,
            message=f"model {body.model!r} is not served here; it serves {info.model_id!r}",
        )
    texts = [body.input] if isinstance(body.input, str) else body.input
    if len(texts) > state.settings.max_client_batch_size:
        raise TooManyInputs(count=len(texts), limit=state.settings.max_client_batch_size)
    result = await unless_disconnected(
        request,
        state.engine.embed(
            texts, truncate=state.settings.auto_truncate, dimensions=body.dimensions
        ),
    )
    if body.encoding_format == "base64":
        encoded: list[object] = [
            base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in result.vectors
        ]
    else:
        encoded = list(result.vectors)
    payload = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": vector}
            for index, vector in enumerate(encoded)
        ],
        "model": body.model or info.model_id,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )
