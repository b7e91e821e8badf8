"""Ranking documents for a query with whichever model is served.

A cross-encoder reads each (query, document) pair and scores it: the pairs go
through the engine as one request, one input per pair, so a query with
thousands of documents is batched with other requests' inputs and counts
against admission by pairs. Its scores pass through the model's activation
(sigmoid for one output) unless raw scores are asked for, so they equal
``CrossEncoder.predict``.

An embedding model ranks by the cosine of the query's vector and each
document's (``scoring: bi-encoder``), with the model's query and document
prompts where it has them: less accurate than a cross-encoder trained for it,
but it makes ``/rerank`` useful with any embedding model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from embedloom.errors import InvalidInput, NotThisTask
from embedloom.scope import Priority
from embedloom.tasks import ScoreHead, activate

if TYPE_CHECKING:
    from embedloom.engine import Embeddings, Engine

__all__ = ["DOCUMENT_PROMPTS", "QUERY_PROMPTS", "Ranking", "rerank"]

Scoring = Literal["cross-encoder", "bi-encoder"]

# The prompt names models commonly give queries and documents, in order of preference.
QUERY_PROMPTS = ("query", "search_query")
DOCUMENT_PROMPTS = ("document", "passage", "search_document", "doc")


@dataclass(frozen=True, slots=True)
class Ranking:
    """Each document's score, in the documents' order, and how it was scored;
    ``result`` carries the timing and token counts of the work."""

    scores: npt.NDArray[np.float32]
    scoring: Scoring
    result: Embeddings

    def order(self, top_n: int | None = None) -> list[int]:
        """Document indices, best first (ties keep the documents' order)."""
        ranked = [int(i) for i in np.argsort(-self.scores, kind="stable")]
        return ranked[:top_n] if top_n is not None else ranked


def reranker_head(engine: Engine) -> ScoreHead:
    """The head of ``engine``'s cross-encoder, if it has one output (a relevance
    score); ``NotThisTask`` for a classifier of several labels."""
    head = engine.model_info.score_head
    assert head is not None, "a cross-encoder's engine knows its head"
    if len(head.labels) != 1:
        raise NotThisTask(
            f"model {engine.name} is a classifier with {len(head.labels)} labels "
            f"({', '.join(head.labels)}), not a reranker: POST /predict classifies"
        )
    return head


async def rerank(
    engine: Engine,
    query: str,
    documents: Sequence[str],
    *,
    raw_scores: bool = False,
    truncate: bool = True,
    truncation_direction: Literal["right", "left"] = "right",
    max_document_tokens: int | None = None,
    timeout: float | None = None,  # noqa: ASYNC109
    priority: Priority | None = None,
) -> Ranking:
    """Score ``documents`` for ``query`` with ``engine``'s model: a cross-encoder
    with one output, or an embedding model (cosine). ``NotThisTask`` for any other."""
    if not isinstance(query, str) or not query:
        raise InvalidInput("query must be a non-empty string", param="query")
    if isinstance(documents, str) or not documents:
        raise InvalidInput("documents must be a non-empty list of texts", param="documents")
    kind = engine.model_info.kind
    if kind == "cross-encoder":
        head = reranker_head(engine)
        result = await engine.score(
            [(query, document) for document in documents],
            truncate=truncate,
            truncation_direction=truncation_direction,
            max_document_tokens=max_document_tokens,
            timeout=timeout,
            priority=priority,
        )
        scores = result.vectors if raw_scores else activate(result.vectors, head.activation)
        return Ranking(np.ascontiguousarray(scores[:, 0]), "cross-encoder", result)
    if kind != "embedding":
        raise NotThisTask(
            f"model {engine.name} is a {kind} model; reranking needs a cross-encoder or "
            "an embedding model"
        )
    names = engine.prompts.prompts
    query_prompt = next((name for name in QUERY_PROMPTS if name in names), None)
    document_prompt = next((name for name in DOCUMENT_PROMPTS if name in names), None)
    embed = functools.partial(
        engine.embed,
        normalize=True,
        truncate=truncate,
        truncation_direction=truncation_direction,
        timeout=timeout,
        priority=priority,
    )
    query_call = asyncio.ensure_future(embed([query], prompt_name=query_prompt))
    documents_call = asyncio.ensure_future(
        embed(list(documents), prompt_name=document_prompt, max_tokens=max_document_tokens)
    )
    try:
        query_result, document_result = await asyncio.gather(query_call, documents_call)
    except BaseException:
        # Neither half is any use without the other: drop it from the queue too.
        for call in (query_call, documents_call):
            call.cancel()
        await asyncio.gather(query_call, documents_call, return_exceptions=True)
        raise
    scores = document_result.vectors @ query_result.vectors[0]
    combined = dataclasses.replace(
        document_result,
        prompt_tokens=document_result.prompt_tokens + query_result.prompt_tokens,
    )
    return Ranking(np.asarray(scores, dtype=np.float32), "bi-encoder", combined)
