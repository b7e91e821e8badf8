"""Request and response bodies of the embedding routes, and how bodies are parsed.

Bodies are JSON: ``guard.RequestGuard`` has refused other content types (415)
and bodies over the size limit (413) before a route reads them; curl's
default ``application/x-www-form-urlencoded`` for ``-d`` is let through and
read as JSON. A body that is not JSON, or not the right shape, is an
``InvalidInput`` naming the field (422).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError

from embedloom.errors import InvalidInput
from embedloom.quantize import EmbeddingType

__all__ = [
    "DecodeRequest",
    "EmbedAllRequest",
    "EmbedRequest",
    "EmbedSparseRequest",
    "EmbeddingData",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "SimilarityRequest",
    "SimpleToken",
    "TokenizeRequest",
    "Usage",
    "body_fields",
    "parse_body",
]

logger = logging.getLogger(__name__)


def _check_inputs(value: object) -> object:
    """Every accepted shape as one batch — a list of texts or a list of token-id
    lists — with one clear message for every wrong shape, instead of pydantic's
    per-union-arm list. A flat list of integers is one input of token ids (OpenAI
    and TEI both read it so)."""
    if isinstance(value, str):
        if not value:
            raise PydanticCustomError("empty_text", "must not be an empty string")
        return [value]
    if not isinstance(value, list):
        raise PydanticCustomError(
            "not_inputs",
            "must be a string, a list of strings, or token ids, not {kind}",
            {"kind": type(value).__name__},
        )
    if not value:
        raise PydanticCustomError("empty_list", "must not be an empty list")
    if all(_is_token(item) for item in value):
        return [value]
    first_is_text = isinstance(value[0], str)
    for index, item in enumerate(value):
        if first_is_text and not isinstance(item, str):
            raise PydanticCustomError(
                "mixed_inputs",
                "item {index} is {kind}: a request's inputs are all strings or all token-id lists",
                {"index": index, "kind": type(item).__name__},
            )
        if isinstance(item, str):
            if not first_is_text:
                raise PydanticCustomError(
                    "mixed_inputs",
                    "item {index} is a string: a request's inputs are all strings or all "
                    "token-id lists",
                    {"index": index},
                )
            if not item:
                raise PydanticCustomError(
                    "empty_text", "item {index} is an empty string", {"index": index}
                )
            continue
        if not isinstance(item, list) or not all(_is_token(token) for token in item):
            raise PydanticCustomError(
                "not_token_ids",
                "item {index} is neither a string nor a list of token ids (integers)",
                {"index": index},
            )
        if not item:
            raise PydanticCustomError(
                "empty_ids", "item {index} is an empty list of token ids", {"index": index}
            )
    return value


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
Inputs = Annotated[
    list[str] | list[list[int]],
    BeforeValidator(_check_inputs),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                _TOKEN_IDS,
                {"type": "array", "items": _TOKEN_IDS, "minItems": 1},
            ]
        }
    ),
]


def _check_texts(value: object) -> object:
    """Texts only (``/tokenize``): a string or a non-empty list of non-empty strings."""
    batch = [value] if isinstance(value, str) else value
    if (
        not isinstance(batch, list)
        or not batch
        or not all(isinstance(item, str) and item for item in batch)
    ):
        raise PydanticCustomError(
            "not_texts", "must be a non-empty string or a non-empty list of non-empty strings"
        )
    return batch


Texts = Annotated[
    list[str],
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


def _lower(value: object) -> object:
    # TEI's schema spells the values Left/Right, its examples left/right: take both.
    return value.lower() if isinstance(value, str) else value


TruncationDirection = Annotated[Literal["right", "left"], BeforeValidator(_lower)]

PROMPT_NAME: Any = Field(
    default=None,
    description="one of the model's prompts (config_sentence_transformers.json), put "
    "before each text; its tokens count toward the maximum length and are never cut",
)
TRUNCATION_DIRECTION: Any = Field(
    default="right", description="which end of an over-long input is cut: right or left"
)
EMBEDDING_TYPE: Any = Field(
    default="float",
    description="embedloom's extension: float, int8, uint8, binary, ubinary (Cohere's "
    "names; int8/uint8 calibrated per model, bits packed eight to a byte)",
)


class EmbeddingRequest(BaseModel):
    """OpenAI ``POST /v1/embeddings`` (and TEI's ``/embeddings``), with embedloom's
    extensions ``prompt_name``, ``truncation_direction`` and ``embedding_type``."""

    model_config = ConfigDict(extra="ignore")

    input: Inputs = Field(description="a string, a list of strings, or the model's token ids")
    model: str | None = Field(
        default=None,
        description="a served model's name or alias (GET /v1/models); the default model "
        "if not given",
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Dimensions | None = Field(
        default=None, description="keep the first N dimensions (re-normalised)"
    )
    user: str | None = Field(default=None, description="logged with the request")
    prompt_name: str | None = PROMPT_NAME
    truncation_direction: TruncationDirection = TRUNCATION_DIRECTION
    embedding_type: EmbeddingType = EMBEDDING_TYPE


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[int] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class EmbedRequest(BaseModel):
    """TEI ``POST /embed`` (and ``POST /``, ``/invocations``)."""

    model_config = ConfigDict(extra="ignore")

    inputs: Inputs = Field(description="a string, a list of strings, or the model's token ids")
    normalize: bool = True
    truncate: bool | None = Field(
        default=None, description="cut over-long inputs (default: the server's --auto-truncate)"
    )
    truncation_direction: TruncationDirection = TRUNCATION_DIRECTION
    prompt_name: str | None = PROMPT_NAME
    dimensions: Dimensions | None = None
    model: str | None = Field(
        default=None,
        description="which served model embeds them (not in TEI, which serves one): "
        "a name from GET /v1/models; the default model if not given",
    )
    embedding_type: EmbeddingType = EMBEDDING_TYPE


class EmbedAllRequest(BaseModel):
    """TEI ``POST /embed_all``: each input's token vectors, unpooled."""

    model_config = ConfigDict(extra="ignore")

    inputs: Inputs = Field(description="a string, a list of strings, or the model's token ids")
    truncate: bool | None = Field(
        default=None, description="cut over-long inputs (default: the server's --auto-truncate)"
    )
    truncation_direction: TruncationDirection = TRUNCATION_DIRECTION
    prompt_name: str | None = PROMPT_NAME
    model: str | None = None


class EmbedSparseRequest(EmbedAllRequest):
    """TEI ``POST /embed_sparse``: each input's sparse vector."""


class TokenizeRequest(BaseModel):
    """TEI ``POST /tokenize``."""

    model_config = ConfigDict(extra="ignore")

    inputs: Texts
    add_special_tokens: bool = True
    prompt_name: str | None = PROMPT_NAME
    model: str | None = None


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


def _check_ids(value: object) -> object:
    if isinstance(value, list) and value and all(_is_token(t) for t in value):
        return [value]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(row, list) and row and all(_is_token(t) for t in row) for row in value)
    ):
        return value
    raise PydanticCustomError(
        "not_token_ids", "must be a non-empty list of token ids, or a list of such lists"
    )


class DecodeRequest(BaseModel):
    """TEI ``POST /decode``."""

    model_config = ConfigDict(extra="ignore")

    ids: Annotated[
        list[list[int]],
        BeforeValidator(_check_ids),
        WithJsonSchema({"anyOf": [_TOKEN_IDS, {"type": "array", "items": _TOKEN_IDS}]}),
    ]
    skip_special_tokens: bool = True
    model: str | None = None


class SimilarityInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    source_sentence: Annotated[str, Field(min_length=1)]
    sentences: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


class SimilarityParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt_name: str | None = PROMPT_NAME
    truncate: bool | None = None
    truncation_direction: TruncationDirection = TRUNCATION_DIRECTION


class SimilarityRequest(BaseModel):
    """TEI ``POST /similarity``: cosine of ``source_sentence`` with each of ``sentences``."""

    model_config = ConfigDict(extra="ignore")

    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None
    model: str | None = None


Model = TypeVar("Model", bound=BaseModel)


def body_fields(body: bytes) -> dict[str, Any]:
    """The request body's JSON object, or ``InvalidInput`` saying why it is not one."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def parse_body(body: bytes, model: type[Model]) -> Model:
    data = body_fields(body)
    # Fields outside the route's dialect are ignored (clients send extras, such as
    # a provider's own options); every field of the dialect is honoured or refused.
    ignored = sorted(set(data) - set(model.model_fields))
    if ignored:
        logger.debug("ignoring fields outside %s: %s", model.__name__, ", ".join(ignored))
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
