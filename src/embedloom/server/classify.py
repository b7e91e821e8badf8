"""Classification routes: TEI's ``POST /predict`` (a text, a pair, or a batch of
either) and Infinity's ``POST /classify`` (texts). A cross-encoder's outputs are
its labels (``id2label``); scores are softmaxed over several labels or put
through a sigmoid for one, as TEI does, unless raw scores are asked for.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError
from starlette.responses import Response

from embedloom.backends.base import TextPair
from embedloom.engine import Embeddings, Engine
from embedloom.server.errors import EMBEDDING_ERRORS, error_responses
from embedloom.server.schemas import TRUNCATION_DIRECTION, Texts, TruncationDirection, parse_body
from embedloom.server.state import (
    json_answer,
    json_body,
    on_model,
    request_id,
    server_state,
    token_usage,
)
from embedloom.tasks import activate

__all__ = ["predict", "router"]

router = APIRouter()

_TASK_ERRORS = (400, *EMBEDDING_ERRORS)


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _is_pair(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_text(t) for t in value)


def _check_predict_inputs(value: object) -> object:
    """TEI's reading: a text, or a two-text list (one pair), is one input; otherwise
    a list of texts and pairs is a batch. The batch flag rides along."""
    if _is_text(value) or _is_pair(value):
        return {"batch": False, "items": [value]}
    if isinstance(value, list) and value and all(_is_text(v) or _is_pair(v) for v in value):
        return {"batch": True, "items": value}
    raise PydanticCustomError(
        "not_predict_inputs",
        "must be a text, a [text, text] pair, or a non-empty list of texts and pairs",
    )


class PredictInputs(BaseModel):
    batch: bool
    items: list[str | list[str]]


class PredictRequest(BaseModel):
    """TEI ``POST /predict``."""

    model_config = ConfigDict(extra="ignore")

    inputs: Annotated[
        PredictInputs,
        BeforeValidator(_check_predict_inputs),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
                    {"type": "array", "items": {}, "minItems": 1},
                ]
            }
        ),
    ] = Field(description="a text, a pair of texts, or a list of texts and pairs")
    raw_scores: bool = False
    truncate: bool | None = Field(
        default=None, description="cut over-long inputs (default: the server's --auto-truncate)"
    )
    truncation_direction: TruncationDirection = TRUNCATION_DIRECTION
    model: str | None = None


class ClassifyRequest(BaseModel):
    """Infinity ``POST /classify``."""

    model_config = ConfigDict(extra="ignore")

    input: Texts
    model: str | None = None
    raw_scores: bool = False


async def _classify(
    request: Request,
    model: str | None,
    items: list[str | TextPair],
    *,
    raw_scores: bool,
    truncate: bool,
    truncation_direction: TruncationDirection = "right",
) -> tuple[list[list[dict[str, Any]]], Embeddings]:
    """Each item's labels with their scores, best first."""

    async def run(
        engine: Engine, default_timeout: float | None
    ) -> tuple[npt.NDArray[np.float32], tuple[str, ...], Embeddings]:
        result = await engine.score(
            items,
            truncate=truncate,
            truncation_direction=truncation_direction,
            timeout=default_timeout,
        )
        head = engine.model_info.score_head
        assert head is not None, "a cross-encoder's engine knows its head"
        scores = result.vectors
        if not raw_scores:
            scores = activate(scores, "sigmoid" if len(head.labels) == 1 else "softmax")
        return scores, head.labels, result

    scores, labels, result = await on_model(request, model, len(items), run)
    answers = []
    for row in scores:
        order = np.argsort(-row, kind="stable")
        answers.append([{"score": float(row[i]), "label": labels[i]} for i in order])
    return answers, result


@router.post(
    "/predict",
    response_model=None,
    summary="Classify a text or a text pair, or a batch of them (TEI-compatible)",
    responses=error_responses("/predict", _TASK_ERRORS),
    openapi_extra=json_body(PredictRequest),
)
async def predict(request: Request) -> Response:
    body = parse_body(await request.body(), PredictRequest)
    state = server_state(request)
    items: list[str | TextPair] = [
        item if isinstance(item, str) else (item[0], item[1]) for item in body.inputs.items
    ]
    answers, result = await _classify(
        request,
        body.model,
        items,
        raw_scores=body.raw_scores,
        truncate=state.truncates(body.truncate),
        truncation_direction=body.truncation_direction,
    )
    return json_answer(answers if body.inputs.batch else answers[0], result)


@router.post(
    "/classify",
    response_model=None,
    summary="Classify texts (Infinity-compatible)",
    responses=error_responses("/classify", _TASK_ERRORS),
    openapi_extra=json_body(ClassifyRequest),
)
async def classify(request: Request) -> Response:
    body = parse_body(await request.body(), ClassifyRequest)
    state = server_state(request)
    served = state.registry.served_name(body.model)
    answers, result = await _classify(
        request, served, list(body.input), raw_scores=body.raw_scores, truncate=True
    )
    payload = {
        "object": "classify",
        "data": answers,
        "model": served,
        "usage": token_usage(result),
        "id": request_id(),
        "created": int(time.time()),
    }
    return json_answer(payload, result)
