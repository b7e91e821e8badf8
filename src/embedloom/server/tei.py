"""The text-embeddings-inference API: ``POST /embed``, ``/embed_sparse``,
``/tokenize``, ``/decode``, ``/similarity``, ``/embed_all``, ``GET /ping``, and
``POST /`` and ``/invocations``, which go to the model's task as TEI's do
(embed, rerank or predict, embed_sparse). ``/rerank`` and ``/predict`` are in
``rerank`` and ``classify``. A route asked of a model that cannot do its task
answers 400 naming what the model does (TEI: 424, its status for a failed
inference too; the request is what is wrong here).
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from embedloom.engine import Embeddings, Engine
from embedloom.server.classify import predict
from embedloom.server.errors import EMBEDDING_ERRORS, TOKENIZER_ERRORS, error_responses
from embedloom.server.rerank import tei_rerank
from embedloom.server.schemas import (
    DecodeRequest,
    EmbedAllRequest,
    EmbedRequest,
    EmbedSparseRequest,
    SimilarityRequest,
    SimpleToken,
    TokenizeRequest,
    body_fields,
    parse_body,
)
from embedloom.server.state import (
    EmbedCall,
    embed_for_request,
    json_answer,
    json_body,
    on_model,
    server_state,
    unless_disconnected,
)

__all__ = ["router"]

router = APIRouter()


async def embed(request: Request) -> Response:
    body = parse_body(await request.body(), EmbedRequest)
    answer = await embed_for_request(
        request,
        EmbedCall(
            body.inputs,
            model=body.model,
            normalize=body.normalize,
            truncate=body.truncate,
            dimensions=body.dimensions,
            prompt_name=body.prompt_name,
            truncation_direction=body.truncation_direction,
            encodings=(body.embedding_type,),
        ),
    )
    (encoded,) = answer.encoded.values()
    return json_answer(encoded, answer.result)


router.add_api_route(
    "/embed",
    embed,
    methods=["POST"],
    response_model=None,
    summary="Embed inputs (TEI-compatible)",
    responses={200: {"model": list[list[float]]}, **error_responses("/embed", EMBEDDING_ERRORS)},
    openapi_extra=json_body(EmbedRequest),
)


async def model_task(request: Request) -> Response:
    """TEI's route to the model's task: embed for an embedding model, embed_sparse
    for a sparse one, rerank (a body with ``query``) or predict for a cross-encoder."""
    fields = body_fields(await request.body())
    model = fields.get("model") if isinstance(fields.get("model"), str) else None
    async with server_state(request).registry.use(model) as engine:
        kind = engine.model_info.kind
    if kind == "sparse":
        return await embed_sparse(request)
    if kind == "cross-encoder":
        return await (tei_rerank(request) if "query" in fields else predict(request))
    return await embed(request)


for _path, _summary in (
    ("/", "TEI's route to the model's task: embed, embed_sparse, rerank or predict"),
    ("/invocations", "TEI's SageMaker route to the model's task, as POST /"),
):
    router.add_api_route(
        _path,
        model_task,
        methods=["POST"],
        response_model=None,
        summary=_summary,
        responses=error_responses(_path, (400, *EMBEDDING_ERRORS)),
        openapi_extra=json_body(EmbedRequest),
        operation_id="model_task" + _path.replace("/", "_"),
    )


@router.post(
    "/tokenize",
    response_model=None,
    summary="Each input's tokens as the model sees them, with their places in the text",
    responses={
        200: {"model": list[list[SimpleToken]]},
        **error_responses("/tokenize", TOKENIZER_ERRORS),
    },
    openapi_extra=json_body(TokenizeRequest),
)
async def tokenize(request: Request) -> Response:
    body = parse_body(await request.body(), TokenizeRequest)
    state = server_state(request)

    async def run() -> list[list[dict[str, object]]]:
        async with state.registry.use(body.model) as engine:
            pieces = await engine.tokens(
                body.inputs, prompt_name=body.prompt_name, special=body.add_special_tokens
            )
        return [
            [
                {"id": p.id, "text": p.text, "special": p.special, "start": p.start, "stop": p.stop}
                for p in row
            ]
            for row in pieces
        ]

    return json_answer(await unless_disconnected(request, run()))


@router.post(
    "/decode",
    response_model=None,
    summary="The text of token ids",
    responses={200: {"model": list[str]}, **error_responses("/decode", TOKENIZER_ERRORS)},
    openapi_extra=json_body(DecodeRequest),
)
async def decode(request: Request) -> Response:
    body = parse_body(await request.body(), DecodeRequest)
    state = server_state(request)

    async def run() -> list[str]:
        async with state.registry.use(body.model) as engine:
            return await engine.decode(body.ids, skip_special=body.skip_special_tokens)

    return json_answer(await unless_disconnected(request, run()))


@router.post(
    "/similarity",
    response_model=None,
    summary="Cosine similarity of source_sentence with each of sentences",
    responses={200: {"model": list[float]}, **error_responses("/similarity", EMBEDDING_ERRORS)},
    openapi_extra=json_body(SimilarityRequest),
)
async def similarity(request: Request) -> Response:
    body = parse_body(await request.body(), SimilarityRequest)
    parameters = body.parameters
    answer = await embed_for_request(
        request,
        EmbedCall(
            [body.inputs.source_sentence, *body.inputs.sentences],
            model=body.model,
            normalize=True,
            truncate=parameters.truncate if parameters else None,
            prompt_name=parameters.prompt_name if parameters else None,
            truncation_direction=parameters.truncation_direction if parameters else "right",
        ),
    )
    vectors = answer.result.vectors
    return json_answer((vectors[1:] @ vectors[0]).astype(np.float64).tolist(), answer.result)


@router.get("/ping", summary="200 while the server is up (TEI's and SageMaker's liveness check)")
async def ping() -> dict[str, str]:
    return {"status": "ok"}


@router.post(
    "/embed_all",
    response_model=None,
    summary="Each input's token vectors before pooling, special and prompt tokens included",
    responses={
        200: {"model": list[list[list[float]]]},
        **error_responses("/embed_all", (400, *EMBEDDING_ERRORS)),
    },
    openapi_extra=json_body(EmbedAllRequest),
)
async def embed_all(request: Request) -> Response:
    body = parse_body(await request.body(), EmbedAllRequest)
    state = server_state(request)

    async def run(engine: Engine, default_timeout: float | None) -> Embeddings:
        return await engine.embed_tokens(
            body.inputs,
            truncate=state.truncates(body.truncate),
            prompt_name=body.prompt_name,
            truncation_direction=body.truncation_direction,
            timeout=default_timeout,
        )

    result = await on_model(request, body.model, len(body.inputs), run)
    return json_answer(result.token_vectors, result)


@router.post(
    "/embed_sparse",
    response_model=None,
    summary="Sparse vectors: each input's non-zero entries (TEI-compatible)",
    responses=error_responses("/embed_sparse", (400, *EMBEDDING_ERRORS)),
    openapi_extra=json_body(EmbedSparseRequest),
)
async def embed_sparse(request: Request) -> Response:
    body = parse_body(await request.body(), EmbedSparseRequest)
    state = server_state(request)

    async def run(engine: Engine, default_timeout: float | None) -> Embeddings:
        return await engine.embed_sparse(
            body.inputs,
            truncate=state.truncates(body.truncate),
            truncation_direction=body.truncation_direction,
            prompt_name=body.prompt_name,
            timeout=default_timeout,
        )

    result = await on_model(request, body.model, len(body.inputs), run)
    assert result.sparse is not None
    answer = [
        [{"index": int(i), "value": float(v)} for i, v in zip(row.indices, row.values, strict=True)]
        for row in result.sparse
    ]
    return json_answer(answer, result)
