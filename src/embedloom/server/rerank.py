"""Reranking routes: TEI's ``POST /rerank`` (``query`` + ``texts``), the shape
Cohere, Jina, Infinity and vLLM share (``query`` + ``documents``, at ``/rerank``,
``/v1/rerank`` and ``/v2/rerank``), and vLLM's ``POST /score``.

All of them rank with the named model through ``embedloom.rerank``: a
cross-encoder scores the pairs; an embedding model ranks by cosine, and the
response says so (``"scoring": "bi-encoder"``).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from embedloom.engine import Embeddings, Engine
from embedloom.errors import InvalidInput
from embedloom.rerank import Ranking, rerank, reranker_head
from embedloom.scope import Priority
from embedloom.server.errors import EMBEDDING_ERRORS, error_responses
from embedloom.server.schemas import (
    TRUNCATION_DIRECTION,
    TruncationDirection,
    body_fields,
    parse_body,
)
from embedloom.server.state import (
    json_answer,
    json_body,
    on_model,
    request_id,
    server_state,
    token_usage,
)
from embedloom.tasks import activate

__all__ = ["router", "tei_rerank"]

router = APIRouter()

Text = Annotated[str, Field(min_length=1)]
Count = Annotated[int, Field(strict=True, ge=1)]
_TASK_ERRORS = (400, *EMBEDDING_ERRORS)


class TeiRerankRequest(BaseModel):
    """TEI ``POST /rerank``."""

    model_config = ConfigDict(extra="ignore")

    query: Text
    texts: Annotated[list[Text], Field(min_length=1)]
    raw_scores: bool = Field(default=False, description="scores before the model's activation")
    return_text: bool = False
    truncate: bool | None = Field(
        default=None, description="cut over-long pairs (default: the server's --auto-truncate)"
    )
    truncation_direction: TruncationDirection = TRUNCATION_DIRECTION
    model: str | None = None


class DocumentObject(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: Text


class RerankRequest(BaseModel):
    """``POST /v1/rerank``, ``/v2/rerank`` (and ``/rerank`` with ``documents``): the
    shape of Cohere, Jina, Infinity and vLLM."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        default=None, description="a served model's name (the default model if not given)"
    )
    query: Text
    documents: Annotated[list[Text | DocumentObject], Field(min_length=1)]
    top_n: Count | None = Field(default=None, description="return only the best N")
    return_documents: bool = False
    max_tokens_per_doc: Count | None = Field(
        default=None, description="cut each document to this many tokens first"
    )
    priority: Annotated[int, Field(strict=True, ge=0)] | None = Field(
        default=None, description="Cohere's: 0 is normal priority, higher is low"
    )
    raw_scores: bool = Field(default=False, description="scores before the model's activation")
    # Accepted by some of these APIs and not done here: refused, not ignored.
    rank_fields: list[str] | None = None
    max_chunks_per_doc: int | None = None
    relevant_spans: Any = None
    truncate_prompt_tokens: int | None = None


class ScoreRequest(BaseModel):
    """vLLM ``POST /score``: ``text_1`` against ``text_2`` (one against many, or
    pairwise)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    text_1: Text | Annotated[list[Text], Field(min_length=1)]
    text_2: Text | Annotated[list[Text], Field(min_length=1)]
    truncate_prompt_tokens: int | None = None


async def tei_rerank(request: Request) -> Response:
    body = parse_body(await request.body(), TeiRerankRequest)
    state = server_state(request)
    truncate = state.truncates(body.truncate)

    async def run(engine: Engine, default_timeout: float | None) -> Ranking:
        return await rerank(
            engine,
            body.query,
            body.texts,
            raw_scores=body.raw_scores,
            truncate=truncate,
            truncation_direction=body.truncation_direction,
            timeout=default_timeout,
        )

    ranking = await on_model(request, body.model, len(body.texts), run)
    answer = []
    for index in ranking.order():
        entry: dict[str, Any] = {"index": index, "score": float(ranking.scores[index])}
        if body.return_text:
            entry["text"] = body.texts[index]
        answer.append(entry)
    return json_answer(answer, ranking.result)


async def documents_rerank(request: Request) -> Response:
    body = parse_body(await request.body(), RerankRequest)
    _refuse_unsupported(body)
    state = server_state(request)
    served = state.registry.served_name(body.model)
    documents = [d if isinstance(d, str) else d.text for d in body.documents]
    priority: Priority | None = None
    if body.priority is not None:
        priority = "normal" if body.priority == 0 else "low"

    async def run(engine: Engine, default_timeout: float | None) -> Ranking:
        return await rerank(
            engine,
            body.query,
            documents,
            raw_scores=body.raw_scores,
            truncate=True,  # as Cohere, Jina and vLLM do: documents are cut, not refused
            max_document_tokens=body.max_tokens_per_doc,
            timeout=default_timeout,
            priority=priority,
        )

    ranking = await on_model(request, served, len(documents), run)
    results = []
    for index in ranking.order(body.top_n):
        entry: dict[str, Any] = {
            "index": index,
            "relevance_score": float(ranking.scores[index]),
        }
        if body.return_documents:
            entry["document"] = {"text": documents[index]}
        results.append(entry)
    payload = {
        "id": request_id(),
        "object": "rerank",
        "model": served,
        "results": results,
        "scoring": ranking.scoring,
        "usage": token_usage(ranking.result),
        "meta": {
            "api_version": {"version": "2" if request.url.path.startswith("/v2/") else "1"},
            "billed_units": {"search_units": 1},
        },
    }
    return json_answer(payload, ranking.result)


def _refuse_unsupported(body: RerankRequest) -> None:
    if body.rank_fields not in (None, ["text"]):
        raise InvalidInput(
            "rank_fields: only the documents' text is ranked; send each document as a "
            "string or {text}",
            param="rank_fields",
        )
    for name in ("max_chunks_per_doc", "relevant_spans", "truncate_prompt_tokens"):
        if getattr(body, name) is not None:
            raise InvalidInput(
                f"{name} is not supported: each document is ranked whole (cut to the "
                "model's maximum length; max_tokens_per_doc cuts it shorter)",
                param=name,
            )


async def rerank_route(request: Request) -> Response:
    """``POST /rerank``: TEI's shape when the body has ``texts``, else the shape of
    the other servers (``documents``)."""
    if "documents" in body_fields(await request.body()):
        return await documents_rerank(request)
    return await tei_rerank(request)


router.add_api_route(
    "/rerank",
    rerank_route,
    methods=["POST"],
    response_model=None,
    summary="Rank texts for a query (TEI's shape, or with 'documents' that of Cohere, "
    "Jina and vLLM)",
    responses=error_responses("/rerank", _TASK_ERRORS),
    openapi_extra=json_body(TeiRerankRequest),
)
for _path in ("/v1/rerank", "/v2/rerank"):
    router.add_api_route(
        _path,
        documents_rerank,
        methods=["POST"],
        response_model=None,
        summary="Rank documents for a query (Cohere-, Jina- and vLLM-compatible)",
        responses=error_responses(_path, _TASK_ERRORS),
        openapi_extra=json_body(RerankRequest),
        operation_id="rerank" + _path.replace("/", "_"),
    )


@router.post(
    "/score",
    response_model=None,
    summary="Score text_1 against text_2, one against many or pairwise (vLLM-compatible)",
    responses=error_responses("/score", _TASK_ERRORS),
    openapi_extra=json_body(ScoreRequest),
)
async def score(request: Request) -> Response:
    body = parse_body(await request.body(), ScoreRequest)
    if body.truncate_prompt_tokens is not None:
        raise InvalidInput(
            "truncate_prompt_tokens is not supported: over-long pairs are cut to the "
            "model's maximum length",
            param="truncate_prompt_tokens",
        )
    state = server_state(request)
    served = state.registry.served_name(body.model)
    firsts = [body.text_1] if isinstance(body.text_1, str) else body.text_1
    seconds = [body.text_2] if isinstance(body.text_2, str) else body.text_2
    if len(firsts) != len(seconds) and 1 not in (len(firsts), len(seconds)):
        raise InvalidInput(
            f"text_1 has {len(firsts)} texts and text_2 {len(seconds)}: give one against "
            "many, or lists of the same length",
            param="text_2",
        )
    count = max(len(firsts), len(seconds))

    async def run(engine: Engine, default_timeout: float | None) -> tuple[Any, Embeddings]:
        if engine.model_info.kind == "embedding":
            # Cosine, as vLLM scores with an embedding model: each text embedded once,
            # both sides in one request (cut, as the cross-encoder's pairs are).
            both = await engine.embed(
                firsts + seconds, normalize=True, truncate=True, timeout=default_timeout
            )
            left, right = both.vectors[: len(firsts)], both.vectors[len(firsts) :]
            width = both.vectors.shape[1]
            cosines = np.einsum(
                "ij,ij->i",
                np.broadcast_to(left, (count, width)),
                np.broadcast_to(right, (count, width)),
            )
            return cosines, both
        head = reranker_head(engine)
        result = await engine.score(
            list(
                zip(firsts * (count // len(firsts)), seconds * (count // len(seconds)), strict=True)
            ),
            truncate=True,
            timeout=default_timeout,
        )
        return activate(result.vectors, head.activation)[:, 0], result

    scores, result = await on_model(request, served, count, run)
    payload = {
        "id": request_id(),
        "object": "list",
        "created": int(time.time()),
        "model": served,
        "data": [
            {"index": index, "object": "score", "score": float(value)}
            for index, value in enumerate(scores)
        ],
        "usage": token_usage(result),
    }
    return json_answer(payload, result)
