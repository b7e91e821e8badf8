"""The text-embeddings-inference API: ``POST /embed`` (also at ``/`` and
``/invocations``, where TEI routes to its model's task), ``/tokenize``,
``/decode``, ``/similarity``, ``GET /ping``; the task routes of models embedloom
does not serve here answer 424 as TEI's do for a model of another task.
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from embedloom.errors import NotThisTask
from embedloom.server.errors import NotImplementedHere
from embedloom.server.schemas import (
    DecodeRequest,
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
        responses={200: {"model": list[list[float]]}},
        openapi_extra=json_body(EmbedRequest),
        operation_id="embed" + _path.replace("/", "_"),
    )


@router.post(
    "/tokenize",
    response_model=None,
    summary="Each input's tokens as the model sees them, with their places in the text",
    responses={200: {"model": list[list[SimpleToken]]}},
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
    responses={200: {"model": list[str]}},
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
    responses={200: {"model": list[float]}},
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
    summary="501: per-token vectors are not served (embedloom's exported graphs pool inside "
    "the model)",
)
async def embed_all(request: Request) -> Response:
    raise NotImplementedHere(
        "/embed_all (per-token vectors) is not served: embedloom's ONNX and OpenVINO graphs "
        "pool inside the model; POST /embed gives the pooled vectors"
    )


for _path in _OTHER_TASKS:
    router.add_api_route(
        _path,
        other_task,
        methods=["POST"],
        response_model=None,
        summary=f"424: {_OTHER_TASKS[_path]} task, which no model served here has",
        operation_id="other_task" + _path.replace("/", "_"),
    )
