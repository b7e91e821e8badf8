"""``POST /v2/embed`` — Cohere's embed API, so the ``cohere`` client works unchanged.

``input_type`` picks the model's prompt where the model has one for it
(``search_query`` → ``query``, ``search_document`` → ``document`` or
``passage``, …), and says so in ``meta.warnings`` where it has none;
``embedding_types`` returns several encodings of the same vectors at once;
``truncate`` NONE refuses over-long texts, START/END cut that end; ``priority``
0 (Cohere's default) is normal priority, anything higher is low. Images and
mixed-content ``inputs`` are refused: embedloom serves text models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from embedloom.errors import InvalidInput
from embedloom.quantize import EmbeddingType
from embedloom.scope import Priority
from embedloom.server.errors import EMBEDDING_ERRORS, error_responses
from embedloom.server.schemas import Dimensions, parse_body
from embedloom.server.state import (
    EmbedCall,
    embed_for_request,
    json_answer,
    json_body,
    request_id,
    server_state,
)

__all__ = ["router"]

router = APIRouter()

InputType = Literal["search_document", "search_query", "classification", "clustering", "image"]

# Cohere's input types → the prompt names models commonly give them, in order of
# preference.
_PROMPTS_FOR: dict[str, tuple[str, ...]] = {
    "search_query": ("search_query", "query"),
    "search_document": ("search_document", "document", "passage", "doc"),
    "classification": ("classification",),
    "clustering": ("clustering",),
}


class CohereEmbedRequest(BaseModel):
    """Cohere ``POST /v2/embed``."""

    model_config = ConfigDict(extra="ignore")

    texts: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    model: str | None = Field(
        default=None, description="a served model's name (the default model if not given)"
    )
    input_type: InputType | None = Field(
        default=None, description="picks the model's prompt for it, where it has one"
    )
    embedding_types: Annotated[list[EmbeddingType], Field(min_length=1)] | None = Field(
        default=None, description="encodings to return (default: float)"
    )
    truncate: Literal["NONE", "START", "END"] = "END"
    output_dimension: Dimensions | None = None
    max_tokens: Annotated[int, Field(strict=True, ge=1)] | None = None
    priority: Annotated[int, Field(strict=True, ge=0)] | None = None
    images: list[Any] | None = None
    inputs: list[Any] | None = None


@router.post(
    "/v2/embed",
    response_model=None,
    summary="Embed texts (Cohere-compatible)",
    responses=error_responses("/v2/embed", EMBEDDING_ERRORS),
    openapi_extra=json_body(CohereEmbedRequest),
)
async def embed(request: Request) -> Response:
    body = parse_body(await request.body(), CohereEmbedRequest)
    if body.images is not None or body.inputs is not None or body.input_type == "image":
        raise InvalidInput(
            "images and mixed-content inputs are not supported: embedloom serves text "
            "models; send texts",
            param="images" if body.images is not None else "inputs",
        )
    if body.texts is None:
        raise InvalidInput("texts is required", param="texts")
    served = server_state(request).registry.served_name(body.model)
    priority: Priority | None = None
    if body.priority is not None:
        priority = "normal" if body.priority == 0 else "low"
    asked: list[EmbeddingType] = body.embedding_types or ["float"]
    kinds = tuple(dict.fromkeys(asked))
    answer = await embed_for_request(
        request,
        EmbedCall(
            body.texts,
            model=served,
            truncate=body.truncate != "NONE",
            truncation_direction="left" if body.truncate == "START" else "right",
            dimensions=body.output_dimension,
            max_tokens=body.max_tokens,
            prompt_candidates=_PROMPTS_FOR.get(body.input_type or "", ()),
            priority=priority,
            encodings=kinds,
        ),
    )
    meta: dict[str, Any] = {
        "api_version": {"version": "2"},
        "billed_units": {"input_tokens": answer.result.prompt_tokens},
    }
    if body.input_type is not None and answer.prompt_name is None:
        meta["warnings"] = [
            f"input_type {body.input_type}: model {served} has no prompt for it, so the texts "
            f"were embedded as without an input_type (its prompts: {answer.model_prompts})"
        ]
    payload = {
        "id": request_id(),
        "embeddings": dict(answer.encoded),
        "texts": body.texts,
        "meta": meta,
        "response_type": "embeddings_by_type",
    }
    return json_answer(payload, answer.result)
