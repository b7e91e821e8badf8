"""Property-based fuzzing of the embedding routes of a real ``embedloom serve``.

schemathesis generates requests from the server's own OpenAPI schema (valid
bodies and, in its negative mode, bodies that break it); hypothesis generates
texts, Unicode of every kind. The properties: never a 5xx, every error in the
documented shape for its route, and every valid text embedded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.helpers import ServerProcess

pytestmark = pytest.mark.model

_FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases on every run: CI failures reproduce
)


_EMBEDDING_ROUTES = ("/v1/embeddings", "/embed", "/v2/embed")
_HALF = settings(_FUZZ, max_examples=30)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def check_answer(path: str, status: int, body: Any) -> None:
    assert status < 500, body
    if status < 400:
        return
    if path.startswith("/v2/"):
        assert set(body) == {"id", "message"}
        assert body["message"]
    elif path.startswith(("/v1/", "/embeddings")):
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["message"]
    else:
        assert set(body) == {"error", "error_type"}
        assert body["error"]


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
@pytest.mark.parametrize(
    "route",
    [
        "/v1/embeddings",
        "/embed",
        "/v2/embed",
        "/tokenize",
        "/decode",
        "/similarity",
        "/rerank",
        "/v2/rerank",
    ],
)
def test_schema_generated_requests_never_get_a_5xx(
    server: ServerProcess, route: str, mode: GenerationMode
) -> None:
    # Cases drawn straight from the operation's strategy: schemathesis's own
    # pytest plugin does not support this pytest yet.
    operation = schemathesis.openapi.from_url(f"{server.url}/openapi.json")[route]["POST"]
    seen: list[int] = []

    # The embedding routes get the full run; the others (whose bodies share their
    # schema pieces) half of it.
    @given(case=operation.as_strategy(generation_mode=mode))
    @(_FUZZ if route in _EMBEDDING_ROUTES else _HALF)
    def each(case: Any) -> None:
        response = case.call(base_url=server.url, timeout=60)
        check_answer(case.path, response.status_code, response.json())
        seen.append(response.status_code)

    each()
    if mode is GenerationMode.NEGATIVE:
        assert any(400 <= status < 500 for status in seen), "negative cases were refused"
    else:
        assert 200 in seen, "valid cases were embedded"


_QUARTER = settings(_FUZZ, max_examples=15)


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
@pytest.mark.parametrize(
    "route", ["/v1/rerank", "/score", "/predict", "/classify", "/embed_sparse"]
)
def test_the_other_task_routes_never_answer_a_5xx(
    server: ServerProcess, route: str, mode: GenerationMode
) -> None:
    """Generated bodies name no model, or one not served: the default (embedding)
    model answers /v1/rerank and /score, and refuses /predict, /classify and
    /embed_sparse with a 400 saying what it does — never a 5xx."""
    operation = schemathesis.openapi.from_url(f"{server.url}/openapi.json")[route]["POST"]
    seen: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @_QUARTER
    def each(case: Any) -> None:
        response = case.call(base_url=server.url, timeout=60)
        check_answer(case.path, response.status_code, response.json())
        seen.append(response.status_code)

    each()
    assert seen
    assert set(seen) <= {200, 400, 404, 413, 422}, seen


_ANY_TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=200)
# Every code point, lone surrogates included: JSON can carry them escaped.
_WITH_SURROGATES = st.text(st.characters(), min_size=1, max_size=40)


@given(texts=st.lists(_ANY_TEXT, min_size=1, max_size=8))
@_FUZZ
def test_any_unicode_text_is_embedded(client: httpx.Client, texts: list[str]) -> None:
    reply = client.post("/v1/embeddings", json={"input": texts})
    assert reply.status_code == 200, reply.text
    data = reply.json()["data"]
    assert [item["index"] for item in data] == list(range(len(texts)))
    for item in data:
        norm = math.sqrt(sum(x * x for x in item["embedding"]))
        assert abs(norm - 1) < 1e-3


@given(texts=st.lists(_WITH_SURROGATES, min_size=1, max_size=4))
@_FUZZ
def test_lone_surrogates_are_refused_and_the_rest_embedded(
    client: httpx.Client, texts: list[str]
) -> None:
    reply = client.post("/embed", json={"inputs": texts})  # httpx escapes surrogates
    check_answer("/embed", reply.status_code, reply.json())
    has_surrogate = any(0xD800 <= ord(c) <= 0xDFFF for text in texts for c in text)
    assert reply.status_code == (422 if has_surrogate else 200), reply.text
