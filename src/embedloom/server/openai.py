"""``POST /v1/embeddings`` — the OpenAI embeddings API (TEI also answers it at
``/embeddings``)."""

from __future__ import annotations

import base64
import logging

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from embedloom.quantize import EmbeddingType
from embedloom.server.errors import EMBEDDING_ERRORS, error_responses
from embedloom.server.schemas import EmbeddingRequest, EmbeddingResponse, parse_body
from embedloom.server.state import (
    EmbedCall,
    embed_for_request,
    json_answer,
    json_body,
    server_state,
    token_usage,
)

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter()


async def create_embeddings(request: Request) -> Response:
    body = parse_body(await request.body(), EmbeddingRequest)
    if body.user is not None:
        # OpenAI's end-user id, for abuse monitoring: kept in the request's log line.
        logger.info("embeddings for user %s", body.user, extra={"user": body.user})
    # An unknown name is refused (404 listing the served ones) before any work.
    served = server_state(request).registry.served_name(body.model)
    encoding: EmbeddingType = body.embedding_type
    if body.encoding_format == "base64":
        # base64 of the floats, as OpenAI sends; with embedding_type, of its bytes.
        encoding = "base64" if encoding == "float" else encoding
    # OpenAI's API has no truncation switch: the server's --auto-truncate decides.
    answer = await embed_for_request(
        request,
        EmbedCall(
            body.input,
            model=served,
            dimensions=body.dimensions,
            prompt_name=body.prompt_name,
            truncation_direction=body.truncation_direction,
            encodings=(encoding,),
        ),
    )
    (encoded,) = answer.encoded.values()
    if body.encoding_format == "base64" and encoding != "base64":
        encoded = [_base64(row) for row in encoded]
    payload = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": vector}
            for index, vector in enumerate(encoded)
        ],
        "model": body.model or served,
        "usage": token_usage(answer.result),
    }
    return json_answer(payload, answer.result)


def _base64(row: object) -> str:
    return base64.b64encode(np.asarray(row).tobytes()).decode("ascii")


for _path, _summary in (
    ("/v1/embeddings", "Create embeddings (OpenAI-compatible)"),
    ("/embeddings", "Create embeddings (OpenAI-compatible; TEI's path for it)"),
):
    router.add_api_route(
        _path,
        create_embeddings,
        methods=["POST"],
        response_model=None,
        summary=_summary,
        responses={
            200: {"model": EmbeddingResponse},
            **error_responses(_path, EMBEDDING_ERRORS),
        },
        openapi_extra=json_body(EmbeddingRequest),
        operation_id=f"create_embeddings{_path.replace('/', '_')}",
    )
