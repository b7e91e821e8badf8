"""``POST /v1/embeddings`` — the OpenAI embeddings API."""

from __future__ import annotations

import base64

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from embedloom.server.schemas import EmbeddingRequest, EmbeddingResponse, parse_body
from embedloom.server.state import embed_for_request, json_body, server_state

__all__ = ["router"]

router = APIRouter()


@router.post(
    "/v1/embeddings",
    response_model=None,
    summary="Create embeddings (OpenAI-compatible)",
    responses={200: {"model": EmbeddingResponse}},
    openapi_extra=json_body(EmbeddingRequest),
)
async def create_embeddings(request: Request) -> Response:
    body = parse_body(await request.body(), EmbeddingRequest)
    # An unknown name is refused (404 listing the served ones) before any work.
    served = server_state(request).registry.served_name(body.model)
    # OpenAI's API has no truncation switch: the server's --auto-truncate decides.
    result = await embed_for_request(request, body.input, dimensions=body.dimensions, model=served)
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
        "model": body.model or served,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )
