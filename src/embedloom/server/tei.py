"""``POST /embed`` — the text-embeddings-inference API."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from embedloom.server.schemas import EmbedRequest, parse_body
from embedloom.server.state import embed_for_request, json_body

__all__ = ["router"]

router = APIRouter()


@router.post(
    "/embed",
    response_model=None,
    summary="Embed inputs (TEI-compatible)",
    responses={200: {"model": list[list[float]]}},
    openapi_extra=json_body(EmbedRequest),
)
async def embed(request: Request) -> Response:
    body = parse_body(await request.body(), EmbedRequest)
    result = await embed_for_request(
        request,
        body.inputs,
        normalize=body.normalize,
        truncate=body.truncate,
        dimensions=body.dimensions,
        model=body.model,
    )
    return Response(
        orjson.dumps(result.vectors, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
    )
