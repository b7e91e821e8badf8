"""TEI conformance: every route and field of text-embeddings-inference's API, served
as TEI serves it or refused with a clear error, checked against a real server.

The facts below are our own table, taken from TEI's OpenAPI document
(``docs/openapi.json`` of huggingface/text-embeddings-inference, release 1.7.1,
commit 006e16b702263e09686b33f9152a5ad0f9468085), plus the routes TEI added
after it (``POST /``, ``/invocations``, ``/embeddings``, ``GET /ping``).
docs/compatibility.md lists where embedloom differs and why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import ServerProcess

pytestmark = pytest.mark.model

# Route → (request fields with their JSON types, what a 200 answer is).
TEI_REQUESTS: dict[str, dict[str, str]] = {
    "/embed": {
        "inputs": "input",
        "normalize": "boolean",
        "prompt_name": "string",
        "truncate": "boolean",
        "truncation_direction": "direction",
    },
    "/embed_all": {
        "inputs": "input",
        "prompt_name": "string",
        "truncate": "boolean",
        "truncation_direction": "direction",
    },
    "/tokenize": {"inputs": "input", "add_special_tokens": "boolean", "prompt_name": "string"},
    "/decode": {"ids": "ids", "skip_special_tokens": "boolean"},
    "/similarity": {"inputs": "similarity_input", "parameters": "similarity_parameters"},
    "/rerank": {
        "query": "string",
        "texts": "array",
        "raw_scores": "boolean",
        "return_text": "boolean",
        "truncate": "boolean",
        "truncation_direction": "direction",
    },
    "/predict": {
        "inputs": "predict_input",
        "raw_scores": "boolean",
        "truncate": "boolean",
        "truncation_direction": "direction",
    },
    "/embed_sparse": {
        "inputs": "input",
        "prompt_name": "string",
        "truncate": "boolean",
        "truncation_direction": "direction",
    },
    "/v1/embeddings": {
        "input": "input",
        "model": "string",
        "encoding_format": "format",
        "user": "string",
    },
}
# Routes TEI serves with /embed's body and answer.
TEI_EMBED_ALIASES = ("/", "/invocations")
# TEI's routes for other model tasks asked of the default (embedding) model: TEI
# answers 424 from a server of the wrong kind; embedloom serves several models, so
# it is the request that names the wrong one (400, saying what the model does).
# /rerank is not here: an embedding model ranks by cosine.
TEI_REFUSED = {"/embed_sparse": 400, "/predict": 400}
TEI_INFO_REQUIRED = {
    "model_id": str,
    "model_dtype": str,
    "model_type": dict,
    "max_concurrent_requests": int,
    "max_input_length": int,
    "max_batch_tokens": int,
    "max_client_batch_size": int,
    "auto_truncate": bool,
    "tokenization_workers": int,
    "version": str,
}
TEI_INFO_OPTIONAL = ("model_sha", "max_batch_requests", "sha", "docker_label")
SIMPLE_TOKEN = {"id": int, "text": str, "special": bool}

VALID_BODIES: dict[str, dict[str, Any]] = {
    "/embed": {
        "inputs": ["a", "b"],
        "normalize": True,
        "truncate": True,
        "truncation_direction": "right",
    },
    "/embed_all": {"inputs": ["a b"], "truncate": True, "truncation_direction": "left"},
    "/tokenize": {"inputs": ["a b"], "add_special_tokens": False},
    "/decode": {"ids": [[101, 102]], "skip_special_tokens": False},
    "/similarity": {
        "inputs": {"source_sentence": "a", "sentences": ["b", "c"]},
        "parameters": {"truncate": True, "truncation_direction": "Left"},
    },
    "/v1/embeddings": {"input": "a", "model": "all-MiniLM-L6-v2", "encoding_format": "float"},
    # TEI serves one model, so its bodies name none: "model" picks one of ours.
    "/rerank": {
        "query": "a",
        "texts": ["b", "c d"],
        "return_text": True,
        "raw_scores": False,
        "truncate": True,
        "truncation_direction": "right",
        "model": "reranker",
    },
    "/predict": {"inputs": ["a", "b"], "raw_scores": False, "model": "classifier"},
    "/embed_sparse": {"inputs": ["a b", "c"], "truncate": True, "model": "splade"},
}


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def openapi(client: httpx.Client) -> dict[str, Any]:
    return dict(client.get("/openapi.json").json())


def request_properties(openapi: dict[str, Any], path: str) -> dict[str, Any]:
    body = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    schema = body["schema"]
    return dict(schema["properties"])


@pytest.mark.parametrize("path", sorted(TEI_REQUESTS))
def test_our_openapi_document_has_every_tei_field(openapi: dict[str, Any], path: str) -> None:
    properties = request_properties(openapi, path)
    missing = set(TEI_REQUESTS[path]) - set(properties)
    assert not missing, f"{path} lacks TEI's {sorted(missing)}"
    for field, kind in TEI_REQUESTS[path].items():
        if kind == "boolean":
            schema = properties[field]
            types = {s.get("type") for s in schema.get("anyOf", [schema])}
            assert "boolean" in types, (path, field, schema)


@pytest.mark.parametrize(
    ("path", "same_as"),
    [("/", "/embed"), ("/invocations", "/embed"), ("/embeddings", "/v1/embeddings")],
)
def test_the_aliases_are_documented(openapi: dict[str, Any], path: str, same_as: str) -> None:
    assert request_properties(openapi, path) == request_properties(openapi, same_as)


@pytest.mark.parametrize("path", sorted(VALID_BODIES))
def test_each_route_answers_a_tei_body_in_tei_shape(client: httpx.Client, path: str) -> None:
    reply = client.post(path, json=VALID_BODIES[path])
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    if path == "/embed":
        assert len(answer) == 2
        assert all(isinstance(v, float) for v in answer[0])
    elif path == "/embed_all":
        assert len(answer[0]) == 4  # [CLS] a b [SEP]
        assert all(len(token) == 384 for token in answer[0])
    elif path == "/tokenize":
        for token in answer[0]:
            for field, kind in SIMPLE_TOKEN.items():
                assert isinstance(token[field], kind)
            assert {"start", "stop"} <= set(token)
        assert not any(token["special"] for token in answer[0])  # add_special_tokens false
    elif path == "/decode":
        assert answer == ["[CLS] [SEP]"]
    elif path == "/similarity":
        assert len(answer) == 2
        assert all(-1 <= v <= 1 for v in answer)
    elif path == "/rerank":
        assert sorted(entry["index"] for entry in answer) == [0, 1]
        for entry in answer:
            assert set(entry) == {"index", "score", "text"}
            assert 0 <= entry["score"] <= 1  # a sigmoid of the model's one output
        assert [e["score"] for e in answer] == sorted((e["score"] for e in answer), reverse=True)
    elif path == "/predict":
        # A two-text list is one pair, as TEI reads it: one answer, every label.
        assert {entry["label"] for entry in answer} == {"negative", "neutral", "positive"}
        assert sum(entry["score"] for entry in answer) == pytest.approx(1, abs=1e-5)
    elif path == "/embed_sparse":
        assert len(answer) == 2
        for vector in answer:
            assert vector
            assert all(set(entry) == {"index", "value"} for entry in vector)
            assert all(entry["value"] > 0 for entry in vector)
    else:
        assert {"object", "data", "model", "usage"} <= set(answer)
        assert {"prompt_tokens", "total_tokens"} <= set(answer["usage"])
        assert {"object", "embedding", "index"} <= set(answer["data"][0])


@pytest.mark.parametrize("path", TEI_EMBED_ALIASES)
def test_the_root_and_invocations_embed_as_embed_does(client: httpx.Client, path: str) -> None:
    body = {"inputs": ["a sentence"]}
    assert client.post(path, json=body).json() == client.post("/embed", json=body).json()


def test_info_has_every_field_tei_requires(client: httpx.Client) -> None:
    info = client.get("/info").json()
    for field, kind in TEI_INFO_REQUIRED.items():
        assert isinstance(info[field], kind), field
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert set(TEI_INFO_OPTIONAL) <= set(info)


@pytest.mark.parametrize(("path", "status"), sorted(TEI_REFUSED.items()))
def test_routes_for_other_tasks_are_refused_clearly(
    client: httpx.Client, path: str, status: int
) -> None:
    reply = client.post(path, json={"inputs": "a", "query": "a", "texts": ["b"]})
    assert reply.status_code == status
    body = reply.json()
    assert set(body) == {"error", "error_type"}
    assert "all-MiniLM-L6-v2 is an embedding model" in body["error"], body
    assert "/embed" in body["error"]  # what it can do instead


def test_ping_and_health(client: httpx.Client) -> None:
    assert client.get("/ping").status_code == 200
    assert client.get("/health").status_code == 200


def test_huggingface_hubs_generated_tei_types_are_all_accepted(openapi: dict[str, Any]) -> None:
    from huggingface_hub import FeatureExtractionInput

    fields = {field.name for field in dataclasses.fields(FeatureExtractionInput)}
    assert fields <= set(request_properties(openapi, "/embed"))


ERROR_BODIES = {"/v1/": "OpenAIErrorBody", "/v2/": "CohereErrorBody", "/": "TEIErrorBody"}


@pytest.mark.parametrize(
    "path",
    [
        "/embed",
        "/",
        "/invocations",
        "/embed_all",
        "/embed_stream",
        "/similarity",
        "/rerank",
        "/predict",
        "/embed_sparse",
        "/v1/embeddings",
        "/v2/embed",
        "/tokenize",
        "/decode",
    ],
)
def test_every_route_documents_its_errors_in_its_dialect(
    openapi: dict[str, Any], path: str
) -> None:
    responses = openapi["paths"][path]["post"]["responses"]
    body = next(name for prefix, name in ERROR_BODIES.items() if path.startswith(prefix))
    statuses = {"422", "413", "404"} | (
        set() if path in ("/tokenize", "/decode") else {"429", "503", "504"}
    )
    for status in statuses:
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith(f"/{body}"), (path, status, schema)
    assert set(openapi["components"]["schemas"]["TEIErrorBody"]["required"]) == {
        "error",
        "error_type",
    }
