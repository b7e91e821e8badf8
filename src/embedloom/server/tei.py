"""The text-embeddings-inference API: ``POST /embed`` (also at ``/`` and
``/invocations``, where TEI routes to its model's task), ``/tokenize``,
``/decode``, ``/similarity``, ``/embed_all``, ``GET /ping``; the routes of other
model tasks answer 400 naming the task (TEI: 424).
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from embedloom.engine import Embeddings
from embedloom.errors import NotThisTask, TooManyInputs
from embedloom.server.errors import EMBEDDING_ERRORS, TOKENIZER_ERRORS, error_responses
from embedloom.server.schemas import (
    DecodeRequest,
    EmbedAllRequest,
    EmbedRequest,
    SimilarityRequest,
    SimpleToken,
    TokenizeRequest,
    parse_body,
)
from embedloom.server.state import (
    EmbedCall,
    embed_for_request,
    json_answer,
    json_body,
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


for _path, _summary in (
    ("/embed", "Embed inputs (TEI-compatible)"),
    ("/", "Embed inputs: TEI's route to the model's task, here embedding"),
    ("/invocations", "Embed inputs: TEI's SageMaker route to the model's task"),
):
    router.add_api_route(
        _path,
        embed,
        methods=["POST"],
        response_model=None,
        summary=_summary,
        responses={200: {"model": list[list[float]]}, **error_responses(_path, EMBEDDING_ERRORS)},
        openapi_extra=json_body(EmbedRequest),
        operation_id="embed" + _path.replace("/", "_"),
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


_OTHER_TASKS = {
    "/rerank": "a re-ranker (a cross-encoder with one output)",
    "/predict": "a sequence-classification model",
    "/embed_sparse": "a sparse (SPLADE) embedding model",
}


async def other_task(request: Request) -> Response:
    state = server_state(request)
    served = state.registry.served_name(None)
    raise NotThisTask(
        f"{request.url.path} needs {_OTHER_TASKS[request.url.path]}; model {served} is an "
        "embedding model (POST /embed)"
    )


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
    limit = state.settings.max_client_batch_size
    if len(body.inputs) > limit:
        raise TooManyInputs(count=len(body.inputs), limit=limit)

    async def run() -> Embeddings:
        async with state.registry.use(body.model) as engine:
            return await engine.embed_tokens(
                body.inputs,
                truncate=state.settings.auto_truncate if body.truncate is None else body.truncate,
                prompt_name=body.prompt_name,
                truncation_direction=body.truncation_direction,
            )

    result = await unless_disconnected(request, run())
    return json_answer(result.token_vectors, result)


for _path in _OTHER_TASKS:
    router.add_api_route(
        _path,
        other_task,
        methods=["POST"],
        response_model=None,
        summary=f"400: {_OTHER_TASKS[_path]} task, which no model served here has",
        responses=error_responses(_path, (400,)),
        operation_id="other_task" + _path.replace("/", "_"),
    )
