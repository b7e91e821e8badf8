"""Request and response bodies of the embedding routes, and how bodies are parsed.

Bodies are JSON: ``guard.RequestGuard`` has refused other content types (415)
and bodies over the size limit (413) before a route reads them; curl's
default ``application/x-www-form-urlencoded`` for ``-d`` is let through and
read as JSON. A body that is not JSON, or not the right shape, is an
``InvalidInput`` naming the field (422).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError

from embedloom.errors import InvalidInput

__all__ = [
    "EmbedRequest",
    "EmbeddingData",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "Usage",
    "parse_body",
]


def _check_texts(value: object) -> object:
    """One clear message for every wrong shape, instead of pydantic's per-union-arm list."""
    if isinstance(value, str):
        if not value:
            raise PydanticCustomError("empty_text", "must not be an empty string")
        return value
    if isinstance(value, list):
        if not value:
            raise PydanticCustomError("empty_list", "must not be an empty list")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise PydanticCustomError(
                    "not_text",
                    "item {index} is {kind}, not a string (token arrays are not supported)",
                    {"index": index, "kind": type(item).__name__},
                )
            if not item:
                raise PydanticCustomError(
                    "empty_text", "item {index} is an empty string", {"index": index}
                )
        return value
    raise PydanticCustomError(
        "not_texts",
        "must be a string or a list of strings, not {kind}",
        {"kind": type(value).__name__},
    )


Texts = Annotated[
    str | list[str],
    BeforeValidator(_check_texts),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
            ]
        }
    ),
]
Dimensions = Annotated[int, Field(strict=True, ge=1)]


class EmbeddingRequest(BaseModel):
    """OpenAI ``POST /v1/embeddings``."""

    model_config = ConfigDict(extra="ignore")

    input: Texts = Field(description="a string, or a list of strings, to embed")
    model: str | None = Field(
        default=None,
        description="a served model's name or alias (GET /v1/models); the default model "
        "if not given",
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Dimensions | None = Field(
        default=None, description="keep the first N dimensions (re-normalised)"
    )
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class EmbedRequest(BaseModel):
    """TEI ``POST /embed``."""

    model_config = ConfigDict(extra="ignore")

    inputs: Texts = Field(description="a string, or a list of strings, to embed")
    normalize: bool = True
    truncate: bool | None = Field(
        default=None, description="cut over-long inputs (default: the server's --auto-truncate)"
    )
    dimensions: Dimensions | None = None
    model: str | None = Field(
        default=None,
        description="which served model embeds them (not in TEI, which serves one): "
        "a name from GET /v1/models; the default model if not given",
    )


Model = TypeVar("Model", bound=BaseModel)


def parse_body(body: bytes, model: type[Model]) -> Model:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"the request body must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(_describe(exc), param=_first_field(exc)) from exc


def _describe(error: ValidationError) -> str:
    problems = []
    for detail in error.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in detail["loc"]) or "body"
        problems.append(f"{location}: {detail['msg']}")
    return "invalid request: " + "; ".join(problems)


def _first_field(error: ValidationError) -> str | None:
    for detail in error.errors(include_url=False, include_input=False):
        if detail["loc"]:
            return str(detail["loc"][0])
    return None
