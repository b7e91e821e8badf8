"""The routes of the other model tasks on a real ``embedloom serve`` (the suite's
shared server: the default model, ``prompted``, and the random-head ``reranker``,
``classifier`` and ``splade``), against sentence-transformers on the same
directories; the cohere client's ``rerank``; a reranker fetched from the (fake) hub.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import CLASSIFIER_LABELS
from tests.fake_hub import FakeHub
from tests.helpers import ServerProcess, long_text, metric_value, sample_texts

pytestmark = pytest.mark.model

MODEL = "all-MiniLM-L6-v2"
QUERY = "how do plants make food"


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def cross_encoders(reranker_dir: Path, classifier_dir: Path) -> dict[str, Any]:
    from sentence_transformers import CrossEncoder

    return {
        "reranker": CrossEncoder(str(reranker_dir), device="cpu"),
        "classifier": CrossEncoder(str(classifier_dir), device="cpu"),
    }


def relevance(cross_encoders: dict[str, Any], query: str, documents: list[str]) -> Any:
    """CrossEncoder.predict's default for one output: a sigmoid of the logit."""
    return cross_encoders["reranker"].predict([(query, d) for d in documents], batch_size=64)


def error_message(path: str, reply: httpx.Response) -> str:
    """The message of an error answer, checking the body is in the route's dialect."""
    body = reply.json()
    if path.startswith("/v2/"):
        assert set(body) == {"id", "message"}, body
        return str(body["message"])
    if path.startswith("/v1/"):
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}
        return str(body["error"]["message"])
    assert set(body) == {"error", "error_type"}, body
    return str(body["error"])


def test_tei_rerank_equals_crossencoder_and_is_sorted(
    client: httpx.Client, cross_encoders: dict[str, Any]
) -> None:
    documents = [*sample_texts(30, seed=31), long_text(400)]  # the last one is cut
    expected = relevance(cross_encoders, QUERY, documents)
    reply = client.post(
        "/rerank",
        json={"model": "reranker", "query": QUERY, "texts": documents, "return_text": True},
    )
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert [e["index"] for e in answer] == np.argsort(-expected, kind="stable").tolist()
    for entry in answer:
        assert entry["score"] == pytest.approx(float(expected[entry["index"]]), abs=1e-5)
        assert entry["text"] == documents[entry["index"]]
    raw = client.post(
        "/rerank",
        json={"model": "reranker", "query": QUERY, "texts": documents, "raw_scores": True},
    ).json()
    logits = np.log(expected / (1 - expected))
    assert {e["index"]: e["score"] for e in raw} == pytest.approx(
        dict(enumerate(logits.tolist())), abs=1e-4
    )


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_documents_rerank_in_the_shape_of_cohere_jina_and_vllm(
    client: httpx.Client, cross_encoders: dict[str, Any], path: str
) -> None:
    documents = sample_texts(12, seed=32)
    expected = relevance(cross_encoders, QUERY, documents)
    body = {
        "model": "reranker",
        "query": QUERY,
        "documents": [documents[0], *({"text": d} for d in documents[1:])],
        "top_n": 5,
        "return_documents": True,
    }
    reply = client.post(path, json=body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["model"] == "reranker"
    assert answer["scoring"] == "cross-encoder"
    best = np.argsort(-expected, kind="stable")[:5].tolist()
    assert [r["index"] for r in answer["results"]] == best
    for result in answer["results"]:
        assert result["relevance_score"] == pytest.approx(float(expected[result["index"]]), 1e-5)
        assert result["document"] == {"text": documents[result["index"]]}
    assert answer["usage"]["total_tokens"] > 12
    assert answer["meta"]["billed_units"] == {"search_units": 1}


def test_rerank_with_the_default_embedding_model_says_it_ranks_by_cosine(
    client: httpx.Client, reference_model: Any
) -> None:
    from sentence_transformers import util

    documents = [
        "The stock market fell on Tuesday.",
        "Plants make food from sunlight by photosynthesis.",
        "Leaves hold chlorophyll, which captures light.",
    ]
    expected = util.cos_sim(
        reference_model.encode([QUERY], convert_to_tensor=True),
        reference_model.encode(documents, convert_to_tensor=True),
    )[0].numpy()
    answer = client.post("/v2/rerank", json={"query": QUERY, "documents": documents}).json()
    assert answer["scoring"] == "bi-encoder"
    assert answer["model"] == MODEL
    assert [r["index"] for r in answer["results"]] == [1, 2, 0]
    for result in answer["results"]:
        assert result["relevance_score"] == pytest.approx(float(expected[result["index"]]), 1e-5)


def test_score_one_against_many_and_pairwise(
    client: httpx.Client, cross_encoders: dict[str, Any], reference_model: Any
) -> None:
    documents = sample_texts(4, seed=33)
    expected = relevance(cross_encoders, QUERY, documents)
    one_to_many = client.post(
        "/score", json={"model": "reranker", "text_1": QUERY, "text_2": documents}
    ).json()
    assert [d["index"] for d in one_to_many["data"]] == [0, 1, 2, 3]
    assert [d["score"] for d in one_to_many["data"]] == pytest.approx(expected.tolist(), abs=1e-5)
    queries = sample_texts(4, seed=34)
    pairwise = client.post(
        "/score", json={"model": "reranker", "text_1": queries, "text_2": documents}
    ).json()
    pair_scores = cross_encoders["reranker"].predict(list(zip(queries, documents, strict=True)))
    assert [d["score"] for d in pairwise["data"]] == pytest.approx(pair_scores.tolist(), abs=1e-5)
    # An embedding model scores by cosine, each pair as vLLM does.
    cosine = client.post("/score", json={"text_1": queries, "text_2": documents}).json()
    left, right = reference_model.encode(queries), reference_model.encode(documents)
    expected_cosine = (left * right).sum(axis=1)  # the model normalises
    assert [d["score"] for d in cosine["data"]] == pytest.approx(expected_cosine.tolist(), 1e-5)
    mismatched = client.post("/score", json={"text_1": queries[:2], "text_2": documents[:3]})
    assert mismatched.status_code == 422
    assert "text_1 has 2 texts and text_2 3" in error_message("/score", mismatched)


def test_predict_and_classify_give_every_label_best_first(
    client: httpx.Client, cross_encoders: dict[str, Any]
) -> None:
    texts = sample_texts(3, seed=35)
    pair = [texts[0], texts[1]]
    classifier = cross_encoders["classifier"]

    def labelled(scores: Any) -> list[dict[str, Any]]:
        order = np.argsort(-scores, kind="stable")
        return [{"label": CLASSIFIER_LABELS[i], "score": float(scores[i])} for i in order]

    def check(answer: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
        assert [a["label"] for a in answer] == [e["label"] for e in expected]
        assert [a["score"] for a in answer] == pytest.approx([e["score"] for e in expected], 1e-5)

    one = client.post("/predict", json={"model": "classifier", "inputs": texts[2]}).json()
    check(one, labelled(classifier.predict(texts[2], apply_softmax=True)))
    as_pair = client.post("/predict", json={"model": "classifier", "inputs": pair}).json()
    check(as_pair, labelled(classifier.predict([tuple(pair)], apply_softmax=True)[0]))
    batch = client.post("/predict", json={"model": "classifier", "inputs": [texts[2], pair]}).json()
    assert len(batch) == 2
    check(batch[0], one)
    check(batch[1], as_pair)
    raw = client.post(
        "/predict", json={"model": "classifier", "inputs": texts[2], "raw_scores": True}
    ).json()
    logits = classifier.predict(texts[2], activation_fn=lambda x: x)
    check(raw, labelled(np.asarray(logits)))
    infinity = client.post("/classify", json={"model": "classifier", "input": [texts[2]]}).json()
    assert infinity["object"] == "classify"
    check(infinity["data"][0], one)


def test_embed_sparse_gives_the_non_zero_entries(client: httpx.Client, splade_dir: Path) -> None:
    from sentence_transformers import SparseEncoder

    texts = sample_texts(5, seed=36)
    expected = SparseEncoder(str(splade_dir), device="cpu").encode(texts).to_dense().numpy()
    answer = client.post("/embed_sparse", json={"model": "splade", "inputs": texts}).json()
    for row, vector in zip(expected, answer, strict=True):
        assert [entry["index"] for entry in vector] == np.flatnonzero(row).tolist()
        assert [e["value"] for e in vector] == pytest.approx(row[row != 0].tolist(), abs=1e-5)


@pytest.mark.parametrize(
    ("model", "body", "route"),
    [
        ("reranker", {"query": QUERY, "texts": ["a", "b"]}, "/rerank"),
        ("classifier", {"inputs": "a"}, "/predict"),
        ("splade", {"inputs": ["a"]}, "/embed_sparse"),
        (MODEL, {"inputs": ["a"]}, "/embed"),
    ],
)
def test_the_root_route_does_the_models_task(
    client: httpx.Client, model: str, body: dict[str, Any], route: str
) -> None:
    body = {**body, "model": model}
    assert client.post("/", json=body).json() == client.post(route, json=body).json()


def test_info_says_what_each_model_does(client: httpx.Client) -> None:
    models = {m["name"]: m for m in client.get("/info").json()["models"]}
    assert models[MODEL]["kind"] == "embedding"
    assert models["reranker"]["kind"] == "cross-encoder"
    id2label = {str(index): label for index, label in enumerate(CLASSIFIER_LABELS)}
    assert models["classifier"]["labels"] == id2label
    assert models["splade"]["kind"] == "sparse"
    # The tasks are named as the routes that do them.
    assert models["reranker"]["tasks"] == ["rerank", "predict", "score"]
    assert models["splade"]["tasks"] == ["embed_sparse"]
    assert "rerank (bi-encoder)" in models[MODEL]["tasks"]


RERANKER = {"model": "reranker", "query": "q"}
BAD_INPUTS = [
    # (route, body, status, words in the message)
    ("/rerank", {**RERANKER, "query": "", "texts": ["a"]}, 422, "query"),
    ("/rerank", {**RERANKER, "texts": []}, 422, "texts"),
    ("/rerank", {**RERANKER, "texts": "a"}, 422, "texts"),
    ("/rerank", {**RERANKER, "documents": []}, 422, "documents"),
    ("/v1/rerank", {**RERANKER, "query": "", "documents": ["a"]}, 422, "query"),
    ("/v1/rerank", RERANKER, 422, "documents"),
    ("/v2/rerank", {**RERANKER, "documents": []}, 422, "documents"),
    ("/v2/rerank", {**RERANKER, "documents": ["a"], "top_n": 0}, 422, "top_n"),
    ("/v2/rerank", {**RERANKER, "documents": ["a"], "top_n": -1}, 422, "top_n"),
    ("/v2/rerank", {**RERANKER, "query": 5, "documents": ["a"]}, 422, "query"),
    ("/v2/rerank", {**RERANKER, "documents": [7]}, 422, "documents"),
    ("/v2/rerank", {**RERANKER, "documents": [{"title": "x"}]}, 422, "text"),
    ("/v2/rerank", {**RERANKER, "documents": ["a"], "rank_fields": ["title"]}, 422, "rank_fields"),
    ("/v2/rerank", {**RERANKER, "documents": ["a"], "max_chunks_per_doc": 2}, 422, "max_chunks"),
    ("/v2/rerank", {**RERANKER, "model": "nope", "documents": ["a"]}, 404, "not served here"),
    ("/v2/rerank", {**RERANKER, "model": "splade", "documents": ["a"]}, 400, "sparse"),
    ("/v1/rerank", {**RERANKER, "model": "classifier", "documents": ["a"]}, 400, "3 labels"),
    ("/predict", {"model": "classifier", "inputs": []}, 422, "inputs"),
    ("/predict", {"model": "classifier", "inputs": ["a", ""]}, 422, "inputs"),
    ("/predict", {"model": "classifier", "inputs": "a", "truncation_direction": "up"}, 422,
     "truncation_direction"),
    ("/predict", {"model": MODEL, "inputs": "a"}, 400, "an embedding model"),
    ("/embed_sparse", {"model": "reranker", "inputs": "a"}, 400, "cross-encoder"),
    ("/embed_sparse", {"model": "splade", "inputs": []}, 422, "inputs"),
    ("/classify", {"model": "classifier", "input": []}, 422, "input"),
    ("/score", {"model": "reranker", "text_1": "", "text_2": "b"}, 422, "text_1"),
    ("/rerank", {**RERANKER, "texts": ["a", long_text(400)], "truncate": False}, 413,
     "longer than"),
]  # fmt: skip


@pytest.mark.parametrize(("route", "body", "status", "words"), BAD_INPUTS)
def test_bad_input_is_refused_in_the_routes_dialect(
    client: httpx.Client, route: str, body: dict[str, Any], status: int, words: str
) -> None:
    reply = client.post(route, json=body)
    assert reply.status_code == status, reply.text
    assert words in error_message(route, reply)


@pytest.mark.parametrize("route", ["/rerank", "/v2/rerank"])
def test_more_documents_than_the_client_limit_is_413(client: httpx.Client, route: str) -> None:
    field = "texts" if route == "/rerank" else "documents"
    reply = client.post(route, json={"model": "reranker", "query": "q", field: ["x"] * 2049})
    assert reply.status_code == 413, reply.text
    assert "2049 inputs" in error_message(route, reply)


def test_64_concurrent_mixed_requests_each_get_their_own_answer(
    client: httpx.Client, cross_encoders: dict[str, Any], reference_encode: Any
) -> None:
    texts = sample_texts(64 * 4, seed=37, words=(2, 30))
    groups = [texts[4 * i : 4 * i + 4] for i in range(64)]

    def call(i: int) -> Any:
        group = groups[i]
        if i % 3 == 0:
            body = {"model": "reranker", "query": group[0], "documents": group[1:]}
            return client.post("/v1/rerank", json=body).json()["results"]
        if i % 3 == 1:
            return client.post("/embed", json={"inputs": group}).json()
        return client.post("/predict", json={"model": "classifier", "inputs": group}).json()

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(call, range(64)))
    embedded = reference_encode(texts)
    for i, (group, answer) in enumerate(zip(groups, answers, strict=True)):
        if i % 3 == 0:
            expected = relevance(cross_encoders, group[0], group[1:])
            got = {r["index"]: r["relevance_score"] for r in answer}
            assert got == pytest.approx(dict(enumerate(expected.tolist())), abs=1e-5)
        elif i % 3 == 1:
            np.testing.assert_allclose(answer, embedded[4 * i : 4 * i + 4], atol=1e-5)
        else:
            classifier = cross_encoders["classifier"]
            probabilities = [classifier.predict(text, apply_softmax=True) for text in group]
            for row, labels in zip(probabilities, answer, strict=True):
                got = {entry["label"]: entry["score"] for entry in labels}
                expected_labels = dict(zip(CLASSIFIER_LABELS, row.tolist(), strict=True))
                assert got == pytest.approx(expected_labels, abs=1e-5)


def test_a_rerank_of_1000_documents_is_one_answer_batched_with_other_requests(
    client: httpx.Client, server: ServerProcess, cross_encoders: dict[str, Any]
) -> None:
    documents = sample_texts(1000, seed=38, words=(2, 12))  # short: 1,000 pairs cost seconds
    small = sample_texts(8, seed=39)

    def shared_batches() -> float:
        metrics = client.get("/metrics").text
        return metric_value(metrics, "embedloom_batches_shared_total", model="reranker")

    before = shared_batches()
    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(
            client.post,
            "/v2/rerank",
            json={"model": "reranker", "query": QUERY, "documents": documents},
        )
        # Other requests keep arriving while its pairs are queued and running.
        smalls = []
        while not big.done():
            smalls.append(
                client.post("/rerank", json={"model": "reranker", "query": QUERY, "texts": small})
            )
        reply = big.result()
    assert reply.status_code == 200, reply.text
    assert smalls
    assert all(r.status_code == 200 for r in smalls)
    expected = relevance(cross_encoders, QUERY, documents)
    results = reply.json()["results"]
    assert len(results) == 1000
    got = {r["index"]: r["relevance_score"] for r in results}
    assert got == pytest.approx(dict(enumerate(expected.tolist())), abs=1e-5)
    assert shared_batches() > before, "its pairs shared batches with the other requests"


def test_the_cohere_client_reranks(client: httpx.Client, cross_encoders: dict[str, Any]) -> None:
    import cohere

    documents = sample_texts(10, seed=40)
    expected = relevance(cross_encoders, QUERY, documents)
    cohere_client = cohere.ClientV2(api_key="unused", base_url=str(client.base_url))
    reply = cohere_client.rerank(
        model="reranker", query=QUERY, documents=documents, top_n=3, max_tokens_per_doc=64
    )
    assert [r.index for r in reply.results] == np.argsort(-expected, kind="stable")[:3].tolist()
    for result in reply.results:
        assert result.relevance_score == pytest.approx(float(expected[result.index]), abs=1e-5)
    with pytest.raises(cohere.errors.UnprocessableEntityError):
        cohere_client.rerank(model="reranker", query=QUERY, documents=documents, top_n=0)


def test_a_reranker_repo_is_fetched_from_the_hub_and_served(
    reranker_dir: Path, tmp_path: Path, cross_encoders: dict[str, Any]
) -> None:
    with FakeHub({"acme/reranker": reranker_dir}) as hub:
        env = {
            "HF_HUB_OFFLINE": "0",
            "HF_ENDPOINT": hub.url,
            "EMBEDLOOM_HOME": str(tmp_path),
            "HF_HOME": str(tmp_path / "hf"),
        }
        args = ("--model", "acme/reranker", "--backend", "torch", "--dtype", "fp32")
        with ServerProcess.start(*args, env=env) as server:
            documents = sample_texts(6, seed=42)
            answer = httpx.post(
                f"{server.url}/rerank", json={"query": QUERY, "texts": documents}, timeout=60
            ).json()
            info = httpx.get(f"{server.url}/info", timeout=10).json()
            assert server.terminate() == 0
        assert hub.downloads()["acme/reranker", "model.safetensors"] == 1
    expected = relevance(cross_encoders, QUERY, documents)
    assert {e["index"]: e["score"] for e in answer} == pytest.approx(
        dict(enumerate(expected.tolist())), abs=1e-5
    )
    assert info["model_type"] == {"reranker": {"id2label": {"0": "LABEL_0"}}}
    assert os.listdir(tmp_path / "models"), "fetched into the store"
