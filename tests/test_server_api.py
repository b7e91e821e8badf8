"""The HTTP API of a real ``embedloom serve`` on loopback, real model behind it."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import ServerProcess, long_text, sample_texts

pytestmark = pytest.mark.model

TEXTS = sample_texts(8, seed=21)


@pytest.fixture(scope="module")
def reference(reference_encode: Any) -> np.ndarray:
    return np.asarray(reference_encode(TEXTS))


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_openai_route_returns_sentence_transformers_vectors(
    client: httpx.Client, reference: np.ndarray
) -> None:
    reply = client.post("/v1/embeddings", json={"input": TEXTS, "model": "all-MiniLM-L6-v2"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "list"
    assert body["model"] == "all-MiniLM-L6-v2"
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    for item, expected in zip(body["data"], reference, strict=True):
        assert item["object"] == "embedding"
        assert len(item["embedding"]) == 384
        assert cosine(item["embedding"], expected) >= 0.99999
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(TEXTS)


def test_openai_route_base64_decodes_to_the_float_vectors(client: httpx.Client) -> None:
    as_float = client.post("/v1/embeddings", json={"input": TEXTS[:2]}).json()
    as_b64 = client.post(
        "/v1/embeddings", json={"input": TEXTS[:2], "encoding_format": "base64"}
    ).json()
    for f, b in zip(as_float["data"], as_b64["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.asarray(f["embedding"], dtype=np.float32))


def test_openai_route_dimensions_shortens_and_renormalises(client: httpx.Client) -> None:
    body = client.post("/v1/embeddings", json={"input": "hello", "dimensions": 64}).json()
    vector = np.asarray(body["data"][0]["embedding"])
    assert vector.shape == (64,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_curl_style_form_content_type_is_read_as_json(client: httpx.Client) -> None:
    reply = client.post(
        "/v1/embeddings",
        content=b'{"input": ["hello", "world"], "model": "all-MiniLM-L6-v2"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert reply.status_code == 200
    assert len(reply.json()["data"]) == 2


@pytest.mark.parametrize("encoding_format", ["float", None], ids=["float", "client-default"])
def test_official_openai_client_works_unchanged(
    server: ServerProcess, reference: np.ndarray, encoding_format: Any
) -> None:
    """The client's default asks for base64 and decodes it itself."""
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    options = {"encoding_format": encoding_format} if encoding_format else {}
    result = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS[:3], **options)
    assert len(result.data) == 3
    for item, expected in zip(result.data, reference[:3], strict=True):
        assert cosine(item.embedding, expected) >= 0.99999
    assert result.usage.prompt_tokens > 0


def test_tei_route(client: httpx.Client, reference: np.ndarray) -> None:
    one = client.post("/embed", json={"inputs": TEXTS[0]})
    assert one.status_code == 200
    assert cosine(one.json()[0], reference[0]) >= 0.99999
    many = client.post("/embed", json={"inputs": TEXTS}).json()
    assert len(many) == len(TEXTS)
    raw = client.post("/embed", json={"inputs": TEXTS[:1], "normalize": False}).json()
    assert np.linalg.norm(raw[0]) != pytest.approx(1.0, abs=1e-3)
    assert cosine(raw[0], reference[0]) >= 0.99999
    truncated = client.post("/embed", json={"inputs": long_text(400), "truncate": True})
    assert truncated.status_code == 200


def test_health_info_metrics_docs(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["model_id"] == "all-MiniLM-L6-v2"
    assert info["dimensions"] == 384
    assert info["max_input_length"] == 256
    assert info["backend"] == "torch"
    # The suite asks for the reference (conftest): no trial, no gate figures.
    assert info["model_dtype"] == "float32"
    assert info["backend_choice"] == {
        "variant": "torch/fp32",
        "reason": "the fp32 reference, as asked",
        "accuracy_gate": None,
    }
    assert {"max_batch_tokens", "max_client_batch_size", "version"} <= info.keys()
    assert info["sharing"] in {"dedicated", "replicas"}
    assert info["replicas"] * info["threads_per_replica"] <= info["thread_budget"]
    client.post("/v1/embeddings", json={"input": "count me"})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        'embedloom_http_requests_total{method="POST",route="/v1/embeddings",status="200"}',
        "embedloom_http_request_duration_seconds_bucket",
        "embedloom_queue_duration_seconds_bucket",
        "embedloom_inference_duration_seconds_bucket",
        "embedloom_queue_size",
        "embedloom_batch_size_bucket",
        "embedloom_batch_tokens_bucket",
        "embedloom_input_tokens_total",
        "embedloom_replicas",
        "embedloom_threads_per_replica",
        "embedloom_thread_budget",
    ):
        assert name in metrics.text, name
    assert 'backend="torch"' in metrics.text
    assert 'dtype="fp32"' in metrics.text
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/v1/embeddings", "/embed", "/health", "/info", "/metrics"} <= schema["paths"].keys()


def test_request_id_is_echoed_and_in_every_log_line(
    client: httpx.Client, server: ServerProcess
) -> None:
    reply = client.post(
        "/v1/embeddings", json={"input": ["trace me"]}, headers={"X-Request-Id": "test-req-0042"}
    )
    assert reply.headers["x-request-id"] == "test-req-0042"
    server.wait_for_log(
        lambda e: e.get("logger") == "embedloom.access" and e.get("request_id") == "test-req-0042"
    )
    mine = [e for e in server.log_entries() if e.get("request_id") == "test-req-0042"]
    assert {e["logger"] for e in mine} >= {"embedloom.engine", "embedloom.access"}
    generated = client.get("/health").headers["x-request-id"]
    assert len(generated) == 32


def openai_error(reply: httpx.Response) -> dict[str, Any]:
    body = reply.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def tei_error(reply: httpx.Response) -> dict[str, Any]:
    body = reply.json()
    assert set(body) == {"error", "error_type"}
    return dict(body)


ERROR_CASES = [
    # (route, raw body, status, words the message must contain)
    ("/v1/embeddings", b'{"input": []}', 422, "input: must not be an empty list"),
    ("/v1/embeddings", b'{"input": ""}', 422, "input: must not be an empty string"),
    ("/v1/embeddings", b'{"input": ["a", ""]}', 422, "item 1 is an empty string"),
    ("/embed", b'{"inputs": []}', 422, "inputs: must not be an empty list"),
    ("/v1/embeddings", b'{"input": ["a", 7]}', 422, "all strings or all token-id lists"),
    ("/v1/embeddings", b'{"input": [[101], "a"]}', 422, "all strings or all token-id lists"),
    ("/v1/embeddings", b'{"input": [[101], []]}', 422, "item 1 is an empty list of token ids"),
    ("/v1/embeddings", b'{"input": [101, 99999]}', 422, "token 1 is 99999, outside"),
    ("/embed", b'{"inputs": [[5, -1]]}', 422, "outside the model's vocabulary"),
    ("/v1/embeddings", b'{"input": 5}', 422, "must be a string, a list of strings"),
    ("/v1/embeddings", b'{"input": null}', 422, "must be a string, a list of strings"),
    ("/embed", b'{"inputs": "x", "prompt_name": "query"}', 422, "not one of the model's prompts"),
    ("/v1/embeddings", b'{"input": "x", "prompt_name": "q"}', 422, "not one of the model's"),
    ("/embed", b'{"inputs": "x", "truncation_direction": "up"}', 422, "truncation_direction"),
    ("/embed", b'{"inputs": "x", "embedding_type": "int4"}', 422, "embedding_type"),
    ("/v1/embeddings", b'{"input": "x", "embedding_type": "int4"}', 422, "embedding_type"),
    ("/tokenize", b'{"inputs": []}', 422, "inputs"),
    ("/tokenize", b'{"inputs": "x", "prompt_name": "q"}', 422, "not one of the model's"),
    ("/decode", b'{"ids": [1, "a"]}', 422, "token ids"),
    ("/decode", b'{"ids": [99999]}', 422, "outside the model's vocabulary"),
    ("/similarity", b'{"inputs": {"source_sentence": "a"}}', 422, "sentences"),
    ("/", b'{"inputs": ""}', 422, "must not be an empty string"),
    ("/predict", b'{"inputs": "a"}', 400, "an embedding model"),
    ("/rerank", b'{"query": "", "texts": ["b"]}', 422, "query"),
    ("/v1/embeddings", b'{"inputs": "wrong key"}', 422, "input: Field required"),
    ("/v1/embeddings", b'{"input": "x", "encoding_format": "hex"}', 422, "encoding_format"),
    ("/v1/embeddings", b'{"input": "x", "dimensions": -3}', 422, "dimensions"),
    ("/v1/embeddings", b'{"input": "x", "dimensions": 4096}', 422, "between 1 and 384"),
    ("/embed", b'{"inputs": "x", "normalize": "sometimes"}', 422, "normalize"),
    ("/v1/embeddings", b'{"input": ["unclosed', 422, "not valid JSON"),
    ("/embed", b"", 422, "not valid JSON"),
    ("/v1/embeddings", b"[1, 2]", 422, "must be a JSON object"),
    ("/v1/embeddings", b'{"input": "x", "model": "gpt-nope"}', 404, "not served here"),
]


@pytest.mark.parametrize(("route", "body", "status", "words"), ERROR_CASES)
def test_bad_requests_get_a_clear_error(
    client: httpx.Client, route: str, body: bytes, status: int, words: str
) -> None:
    reply = client.post(route, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status, reply.text
    message = (openai_error if route.startswith("/v1/") else tei_error)(reply)
    text = message["message"] if "message" in message else message["error"]
    assert words in text


def test_too_many_inputs_is_413(client: httpx.Client) -> None:
    reply = client.post("/v1/embeddings", json={"input": ["x"] * 2049})
    assert reply.status_code == 413
    assert "2049 inputs" in openai_error(reply)["message"]
    reply = client.post("/embed", json={"inputs": ["x"] * 2049})
    assert reply.status_code == 413
    assert tei_error(reply)["error_type"] == "validation"


def test_input_longer_than_the_model_is_cut_unless_truncation_is_refused(
    client: httpx.Client,
) -> None:
    # Cut by default, as sentence-transformers does (--no-auto-truncate refuses).
    reply = client.post("/v1/embeddings", json={"input": ["fine", long_text(400)]})
    assert reply.status_code == 200
    reply = client.post("/embed", json={"inputs": ["fine", long_text(400)], "truncate": False})
    assert reply.status_code == 413
    assert "input 1 is longer than the model's maximum of 256 tokens" in tei_error(reply)["error"]


def test_unknown_routes_and_methods_answer_in_json(client: httpx.Client) -> None:
    missing = client.get("/v3/nothing")
    assert missing.status_code == 404
    assert tei_error(missing)["error"] == "Not Found"
    wrong_method = client.get("/v1/embeddings")
    assert wrong_method.status_code == 405
    assert openai_error(wrong_method)["message"] == "Method Not Allowed"


def test_no_error_body_leaks_internals(client: httpx.Client) -> None:
    for route, body, _, _ in ERROR_CASES:
        text = client.post(route, content=body).text
        assert "Traceback" not in text
        assert "/site-packages/" not in text


async def test_200_concurrent_requests_each_get_their_own_vectors(
    server: ServerProcess, many_texts_reference: tuple[list[str], np.ndarray]
) -> None:
    texts, reference = many_texts_reference
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
        replies = await asyncio.gather(
            *(client.post("/v1/embeddings", json={"input": [text]}) for text in texts)
        )
    assert [r.status_code for r in replies] == [200] * len(texts)
    vectors = np.array([r.json()["data"][0]["embedding"] for r in replies])
    unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    similarity = vectors @ unit.T
    # Each reply matches its own text's vector, and that vector only.
    assert np.all(np.diag(similarity) >= 0.99999)
    assert np.array_equal(similarity.argmax(axis=1), np.arange(len(texts)))


@pytest.fixture(scope="module")
def many_texts_reference(reference_encode: Any) -> tuple[list[str], np.ndarray]:
    texts = sample_texts(200, seed=99)
    return texts, np.asarray(reference_encode(texts))
