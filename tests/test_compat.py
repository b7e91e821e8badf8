"""The client libraries people already use, unchanged, against a real ``embedloom serve``.

The suite's shared server serves all-MiniLM-L6-v2 (the default) and the same
model with named prompts (``prompted``); every vector is compared with sentence-transformers on
the same directory. Offline options, where a client needs one: langchain-openai's
``check_embedding_ctx_length=False`` (its default downloads tiktoken's BPE file
and sends tiktoken ids, not the model's), litellm's
``LITELLM_LOCAL_MODEL_COST_MAP`` and ``input_type="feature-extraction"`` (else
it asks the hub for the model's task).
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from embedloom.quantize import calibration_texts
from tests.conftest import PROMPTS
from tests.helpers import ServerProcess, long_text, sample_texts

pytestmark = pytest.mark.model

TEXTS = sample_texts(6, seed=41)
MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def served(server: ServerProcess) -> ServerProcess:
    """The suite's shared server: all-MiniLM-L6-v2, and ``prompted``."""
    return server


@pytest.fixture(scope="module")
def st_models(reference_model: Any, prompted_model_dir: Path) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    return {
        MODEL: reference_model,
        "prompted": SentenceTransformer(str(prompted_model_dir), device="cpu"),
    }


def st_encode(st_models: dict[str, Any], texts: list[str], **options: Any) -> np.ndarray:
    model = st_models[options.pop("model", MODEL)]
    return np.asarray(model.encode(texts, batch_size=32, **options))


def st_on_ids(st_models: dict[str, Any], ids: list[int], *, normalize: bool = True) -> np.ndarray:
    """sentence-transformers' own modules (transformer, pooling) run on ``ids``,
    tokenised by the caller; L2-normalised as its Normalize module does, if asked."""
    import torch

    transformer, pooling, _normalize = st_models[MODEL].children()
    features: dict[str, Any] = {
        "input_ids": torch.tensor([ids]),
        "token_type_ids": torch.zeros((1, len(ids)), dtype=torch.long),
        "attention_mask": torch.ones((1, len(ids)), dtype=torch.long),
    }
    with torch.inference_mode():
        vector = pooling(transformer(features))["sentence_embedding"][0].numpy()
    return vector / np.linalg.norm(vector) if normalize else vector


def assert_close(actual: Any, expected: Any) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float32), expected, atol=2e-5)


def test_the_openai_client(served: ServerProcess, st_models: dict[str, Any]) -> None:
    from openai import AsyncOpenAI, OpenAI

    client = OpenAI(base_url=f"{served.url}/v1", api_key="unused")
    expected = st_encode(st_models, TEXTS)
    # The client asks for base64 by default and decodes it.
    listed = client.embeddings.create(model=MODEL, input=TEXTS)
    assert_close([d.embedding for d in listed.data], expected)
    single = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    assert_close(single.data[0].embedding, expected[0])
    short = client.embeddings.create(model=MODEL, input=TEXTS[:2], dimensions=64)
    cut = expected[:2, :64] / np.linalg.norm(expected[:2, :64], axis=1, keepdims=True)
    assert_close([d.embedding for d in short.data], cut)
    # Token ids are the served model's ids: /tokenize's output embeds like the text.
    ids = st_models[MODEL].tokenizer(TEXTS[0])["input_ids"]
    by_ids = client.embeddings.create(model=MODEL, input=[ids])
    assert_close(by_ids.data[0].embedding, expected[0])
    prompted = client.embeddings.create(
        model="prompted", input=TEXTS, extra_body={"prompt_name": "query"}
    )
    assert_close(
        [d.embedding for d in prompted.data],
        st_encode(st_models, TEXTS, model="prompted", prompt_name="query"),
    )

    async def asynchronously() -> list[Any]:
        async with AsyncOpenAI(base_url=f"{served.url}/v1", api_key="unused") as aclient:
            replies = await asyncio.gather(
                *(aclient.embeddings.create(model=MODEL, input=text) for text in TEXTS)
            )
        return [reply.data[0].embedding for reply in replies]

    assert_close(asyncio.run(asynchronously()), expected)
    client.close()


def test_langchain_openai_sends_a_thousand_texts_per_request(
    served: ServerProcess, st_models: dict[str, Any]
) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model=MODEL,
        base_url=f"{served.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
    )
    # Its default chunk_size is 1,000: one request of 1,000 and one of 100.
    texts = [f"note {i}: {TEXTS[i % len(TEXTS)][:40]}" for i in range(1100)]
    vectors = np.asarray(embeddings.embed_documents(texts))
    assert vectors.shape == (1100, 384)
    picked = [0, 999, 1000, 1099]
    assert_close(vectors[picked], st_encode(st_models, [texts[i] for i in picked]))
    assert_close(embeddings.embed_query(TEXTS[1]), st_encode(st_models, [TEXTS[1]])[0])


def test_huggingface_hub_inference_client_posts_to_the_root(
    served: ServerProcess, st_models: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import InferenceClient, constants

    # The suite runs offline, which the client applies even to a loopback URL.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    client = InferenceClient(model=served.url)
    assert_close(client.feature_extraction(TEXTS[0])[0], st_encode(st_models, [TEXTS[0]])[0])
    raw = client.feature_extraction(TEXTS[1], normalize=False)[0]
    ids = st_models[MODEL].tokenizer(TEXTS[1])["input_ids"]
    assert_close(raw, st_on_ids(st_models, ids, normalize=False))
    assert abs(np.linalg.norm(raw) - 1) > 1e-3
    # Left truncation: the model's tokenizer cutting from the left is the reference.
    text = long_text(400)
    tokenizer = st_models[MODEL].tokenizer
    tokenizer.truncation_side = "left"
    try:
        ids = tokenizer(text, truncation=True, max_length=256)["input_ids"]
    finally:
        tokenizer.truncation_side = "right"
    left = client.feature_extraction(text, truncation_direction="left")[0]
    assert_close(left, st_on_ids(st_models, ids))
    right = client.feature_extraction(text, truncation_direction="right")[0]
    assert_close(right, st_encode(st_models, [text])[0])


def test_llama_index_tei_and_openai_embeddings(
    served: ServerProcess, st_models: dict[str, Any]
) -> None:
    from llama_index.embeddings.openai import OpenAIEmbedding
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    expected = st_encode(st_models, TEXTS)
    tei = TextEmbeddingsInference(model_name=MODEL, base_url=served.url)
    assert_close(tei.get_text_embedding_batch(TEXTS), expected)
    openai = OpenAIEmbedding(model_name=MODEL, api_base=f"{served.url}/v1", api_key="unused")
    assert_close(openai.get_text_embedding_batch(TEXTS), expected)


def test_litellm_openai_and_huggingface_providers(
    served: ServerProcess, st_models: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    expected = st_encode(st_models, TEXTS[:3])
    via_openai = litellm.embedding(
        model=f"openai/{MODEL}", api_base=f"{served.url}/v1", api_key="unused", input=TEXTS[:3]
    )
    assert_close([d["embedding"] for d in via_openai.data], expected)
    via_hf = litellm.embedding(
        model=f"huggingface/{MODEL}",
        api_base=served.url,  # POST / with TEI's body
        api_key="unused",
        input=TEXTS[:3],
        input_type="feature-extraction",
    )
    assert_close([d["embedding"] for d in via_hf.data], expected)


def test_the_cohere_client_with_every_embedding_type(
    served: ServerProcess, st_models: dict[str, Any]
) -> None:
    import cohere
    from sentence_transformers.util.quantization import quantize_embeddings

    client = cohere.ClientV2(api_key="unused", base_url=served.url)
    reply = client.embed(
        texts=TEXTS,
        model="prompted",
        input_type="search_query",
        embedding_types=["float", "int8", "uint8", "binary", "ubinary", "base64"],
    )
    assert reply.meta is not None
    assert reply.meta.warnings is None
    floats = st_encode(st_models, TEXTS, model="prompted", prompt_name="query")
    embeddings = reply.embeddings
    assert_close(embeddings.float_, floats)
    decoded = [np.frombuffer(base64.b64decode(b), dtype="<f4") for b in embeddings.base64 or []]
    np.testing.assert_array_equal(decoded, np.asarray(embeddings.float_, dtype=np.float32))
    # int8/uint8 calibrated on the shipped corpus, as sentence-transformers does it
    # given the same calibration embeddings (a vector a hair from a step's edge may
    # land one step over: the server's float32 is not bit-equal to torch here).
    calibration = st_encode(st_models, calibration_texts(), model="prompted")
    for kind in ("int8", "uint8", "binary", "ubinary"):
        expected = quantize_embeddings(floats, precision=kind, calibration_embeddings=calibration)
        got = np.asarray(getattr(embeddings, kind), dtype=np.int64)
        assert got.shape == expected.shape
        assert np.mean(got == expected) > 0.99, kind
        assert np.abs(got - expected.astype(np.int64)).max() <= 1 or kind.endswith("binary")
    # A model without a prompt for the input type says so.
    plain = client.embed(texts=TEXTS[:1], model=MODEL, input_type="search_document")
    assert plain.meta is not None
    assert plain.meta.warnings
    assert "has no prompt for it" in plain.meta.warnings[0]
    with pytest.raises(cohere.errors.UnprocessableEntityError):
        client.embed(texts=TEXTS[:1], model=MODEL, input_type="search_query", max_tokens=1)


def test_prompts_are_honoured_never_cut_and_listed_when_unknown(
    served: ServerProcess, st_models: dict[str, Any]
) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as client:
        reply = client.post(
            "/embed", json={"inputs": TEXTS, "model": "prompted", "prompt_name": "document"}
        )
        expected = st_encode(st_models, TEXTS, model="prompted", prompt_name="document")
        assert_close(reply.json(), expected)
        # Cut from the left, the prompt stays: [CLS] passage : <the text's tail> [SEP].
        text = long_text(400)
        tokenizer = st_models[MODEL].tokenizer
        prompt_ids = tokenizer(PROMPTS["document"], add_special_tokens=False)["input_ids"]
        tail = tokenizer(text, add_special_tokens=False)["input_ids"][-(254 - len(prompt_ids)) :]
        ids = [tokenizer.cls_token_id, *prompt_ids, *tail, tokenizer.sep_token_id]
        left = client.post(
            "/embed",
            json={
                "inputs": text,
                "model": "prompted",
                "prompt_name": "document",
                "truncation_direction": "Left",
            },
        )
        assert_close(left.json()[0], st_on_ids(st_models, ids))
        tokens = client.post(
            "/tokenize", json={"inputs": "Hi", "model": "prompted", "prompt_name": "query"}
        ).json()[0]
        assert [t["text"] for t in tokens] == ["[CLS]", "query", ":", "Hi", "[SEP]"]
        assert tokens[3]["start"] == len(PROMPTS["query"])
        assert tokens[0]["start"] is None
        unknown = client.post(
            "/embed", json={"inputs": "x", "model": "prompted", "prompt_name": "summary"}
        )
        assert unknown.status_code == 422
        assert "document, query" in unknown.json()["error"]
        info = client.get("/info").json()
        prompted = next(m for m in info["models"] if m["name"] == "prompted")
        assert prompted["prompts"] == PROMPTS


def test_token_ids_tokenize_decode_and_similarity_round_trip(
    served: ServerProcess, st_models: dict[str, Any]
) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as client:
        tokens = client.post("/tokenize", json={"inputs": TEXTS[:2]}).json()
        ids = [[t["id"] for t in row] for row in tokens]
        by_ids = client.post("/embed", json={"inputs": ids})
        assert_close(by_ids.json(), st_encode(st_models, TEXTS[:2]))
        decoded = client.post("/decode", json={"ids": ids[0]}).json()
        assert decoded == [st_models[MODEL].tokenizer.decode(ids[0], skip_special_tokens=True)]
        similarity = client.post(
            "/similarity",
            json={"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:4]}},
        ).json()
        vectors = st_encode(st_models, TEXTS[:4])
        np.testing.assert_allclose(similarity, vectors[1:] @ vectors[0], atol=2e-5)


def test_embed_all_gives_sentence_transformers_token_embeddings(
    served: ServerProcess, st_models: dict[str, Any]
) -> None:
    expected = st_models[MODEL].encode(TEXTS[:3], output_value="token_embeddings")
    with httpx.Client(base_url=served.url, timeout=60) as client:
        reply = client.post("/embed_all", json={"inputs": TEXTS[:3]})
    assert reply.status_code == 200, reply.text
    for got, want in zip(reply.json(), expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-4)


def test_every_embedding_answer_carries_tei_timing_headers(served: ServerProcess) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as client:
        for path, body in (
            ("/embed", {"inputs": "a"}),
            ("/", {"inputs": "a"}),
            ("/invocations", {"inputs": "a"}),
            ("/v1/embeddings", {"input": "a"}),
            ("/embeddings", {"input": "a"}),
            ("/v2/embed", {"texts": ["a"]}),
            ("/embed_all", {"inputs": "a"}),
        ):
            reply = client.post(path, json=body)
            assert reply.status_code == 200, (path, reply.text)
            for header in (
                "x-compute-time",
                "x-tokenization-time",
                "x-queue-time",
                "x-inference-time",
                "x-compute-tokens",
            ):
                assert int(reply.headers[header]) >= 0, (path, header)


def test_quantized_outputs_on_the_openai_and_tei_routes(served: ServerProcess) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as client:
        ubinary = client.post("/embed", json={"inputs": TEXTS[:2], "embedding_type": "ubinary"})
        floats = np.asarray(client.post("/embed", json={"inputs": TEXTS[:2]}).json())
        np.testing.assert_array_equal(ubinary.json(), np.packbits(floats > 0, axis=1))
        int8 = client.post(
            "/v1/embeddings",
            json={"input": TEXTS[:2], "embedding_type": "int8", "dimensions": 128},
        ).json()
        assert len(int8["data"][0]["embedding"]) == 128
        assert all(-128 <= v <= 127 for v in int8["data"][0]["embedding"])
        packed = client.post(
            "/v1/embeddings",
            json={"input": TEXTS[:1], "embedding_type": "int8", "encoding_format": "base64"},
        ).json()
        raw = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype=np.int8)
        assert raw.shape == (384,)


def test_bad_values_of_the_new_fields_are_4xx_in_each_dialect(served: ServerProcess) -> None:
    cases = [
        ("/v2/embed", {"texts": ["a"], "embedding_types": ["int4"]}, 422),
        ("/v2/embed", {"texts": ["a"], "truncate": "MIDDLE"}, 422),
        ("/v2/embed", {"texts": ["a"], "images": ["data:image/png;base64,AA=="]}, 422),
        ("/v2/embed", {"model": "nope", "texts": ["a"]}, 404),
        ("/v2/embed", {"texts": [long_text(400)], "truncate": "NONE"}, 413),
        ("/embed", {"inputs": [[1, 2], "a"]}, 422),
        ("/embed", {"inputs": "x", "model": "prompted", "prompt_name": "nope"}, 422),
        ("/v1/embeddings", {"input": [[0, 30522]]}, 422),
        ("/embeddings", {"input": "x", "truncation_direction": "middle"}, 422),
        ("/embed_stream", {"inputs": ["x"], "embedding_type": "hex"}, 422),
    ]
    with httpx.Client(base_url=served.url, timeout=60) as client:
        for path, body, status in cases:
            reply = client.post(path, json=body)
            assert reply.status_code == status, (path, body, reply.text)
            error = reply.json()
            if path.startswith("/v2/"):
                assert set(error) == {"id", "message"}
                assert error["message"]
            elif path.startswith(("/v1/", "/embeddings")):
                assert set(error["error"]) == {"message", "type", "param", "code"}
            else:
                assert set(error) == {"error", "error_type"}


def test_the_stream_takes_the_same_fields(served: ServerProcess, st_models: dict[str, Any]) -> None:
    import orjson

    with httpx.Client(base_url=served.url, timeout=60) as client:
        reply = client.post(
            "/embed_stream",
            json={"inputs": TEXTS, "model": "prompted", "prompt_name": "query"},
        )
        lines = [orjson.loads(line) for line in reply.content.splitlines()]
        assert_close(
            [line["embedding"] for line in lines],
            st_encode(st_models, TEXTS, model="prompted", prompt_name="query"),
        )
        bits = client.post("/embed_stream", json={"inputs": TEXTS[:2], "embedding_type": "binary"})
        assert [len(orjson.loads(line)["embedding"]) for line in bits.content.splitlines()] == [
            48,
            48,
        ]


def test_compat_clients_are_installed() -> None:
    # scripts/test installs the compat extra; a missing client must fail, not skip.
    for module in ("openai", "langchain_openai", "huggingface_hub", "cohere", "litellm"):
        __import__(module)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
