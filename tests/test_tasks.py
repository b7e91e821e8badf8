"""The other model tasks on the real engine: a cross-encoder's scores, a classifier's
labels and a SPLADE model's sparse vectors, each equal to what sentence-transformers
computes on the same directory (``CrossEncoder.predict``, ``SparseEncoder.encode``),
and reranking with an embedding model equal to sentence-transformers' cosine.

The cross-encoder and SPLADE fixtures are the packaged MiniLM encoder with random
heads (tests/helpers.py): they prove the plumbing — tokenising pairs, cutting,
batching, the heads, the activations — not the quality of any ranking.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from embedloom import Engine, Settings
from embedloom.backends.torch import TorchBackend
from embedloom.errors import BackendError, NotThisTask
from embedloom.rerank import rerank
from embedloom.store import ModelStore
from embedloom.tasks import activate, model_kind
from embedloom.variants.catalog import Variant, open_variant
from embedloom.variants.choice import choose_variant
from embedloom.variants.gate import calibration_texts, gate_outputs, measure_outputs
from tests.conftest import CLASSIFIER_LABELS
from tests.helpers import long_text, sample_texts

pytestmark = pytest.mark.model

T = TypeVar("T")
QUERIES = ["how do plants make food", "what is the capital of France"]


def mixed_pairs() -> list[tuple[str, str]]:
    """Pairs of very different lengths, some far over the model's 256 tokens (cut as
    CrossEncoder cuts them), so that batches are padded and mixed."""
    documents = sample_texts(20, seed=21, words=(1, 60))
    documents += [long_text(400), long_text(300) + " tail", "x"]
    pairs = [(query, document) for query in QUERIES for document in documents]
    pairs.append((long_text(200), long_text(200)))  # both sides cut
    return pairs


async def off(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a reference computation off the event loop (the suite fails a blocked loop)."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def settings_for(model_dir: Path, **extra: Any) -> Settings:
    return Settings(model=(str(model_dir),), backend="torch", dtype="fp32", **extra)


@pytest.fixture(scope="module", autouse=True)
def _sentence_transformers_imported() -> None:
    """Importing sentence-transformers takes seconds: done here, before the async
    tests' event loops (their own imports of it are then instant)."""
    import sentence_transformers  # noqa: F401
    import transformers  # noqa: F401


@pytest.fixture(scope="module")
def cross_encoder(reranker_dir: Path) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(reranker_dir), device="cpu")


def test_each_fixture_is_recognised_as_its_kind(
    model_dir: Path, reranker_dir: Path, classifier_dir: Path, splade_dir: Path
) -> None:
    assert model_kind(model_dir) == "embedding"
    assert model_kind(reranker_dir) == "cross-encoder"
    assert model_kind(classifier_dir) == "cross-encoder"
    assert model_kind(splade_dir) == "sparse"


async def test_cross_encoder_scores_equal_crossencoder_predict(
    reranker_dir: Path, cross_encoder: Any
) -> None:
    import torch

    pairs = mixed_pairs()
    expected = await off(
        cross_encoder.predict, pairs, activation_fn=torch.nn.Identity(), batch_size=64
    )
    sigmoid = await off(cross_encoder.predict, pairs, batch_size=64)  # its default for 1 output
    async with Engine.from_settings(settings_for(reranker_dir, max_batch_size=8)) as engine:
        result = await engine.score(pairs, truncate=True)
        stats = engine.statistics()
        head = engine.model_info.score_head
    assert result.vectors.shape == (len(pairs), 1)
    np.testing.assert_allclose(result.vectors[:, 0], expected, atol=1e-5)
    assert stats.batches_run >= len(pairs) // 8  # split across batches, answered once
    assert head is not None
    assert head.activation == "sigmoid"
    np.testing.assert_allclose(activate(result.vectors, head.activation)[:, 0], sigmoid, atol=1e-5)


async def test_an_over_long_pair_is_refused_unless_truncation_is_asked(reranker_dir: Path) -> None:
    from embedloom import InputTooLong

    async with Engine.from_settings(settings_for(reranker_dir)) as engine:
        with pytest.raises(InputTooLong):
            await engine.score([("q", "fine"), ("q", long_text(400))])
        cut = await engine.score([("q", long_text(400))], max_document_tokens=20)
    assert cut.vectors.shape == (1, 1)


@pytest.mark.parametrize("direction", ["right", "left"])
def test_pairs_are_tokenised_as_the_models_tokenizer_does(
    reranker_dir: Path, direction: str
) -> None:
    from transformers import AutoTokenizer

    from embedloom.backends.base import TokenizeOptions

    backend = TorchBackend(reranker_dir, device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(reranker_dir), truncation_side=direction)
    pairs = mixed_pairs()
    ours = backend.tokenize_pairs(pairs, TokenizeOptions(left=direction == "left"))
    theirs = tokenizer(
        [q for q, _ in pairs], [d for _, d in pairs], truncation=True, max_length=256
    )
    assert [list(t.input_ids) for t in ours] == theirs["input_ids"]
    assert [list(t.token_type_ids or ()) for t in ours] == theirs["token_type_ids"]
    whole = tokenizer([q for q, _ in pairs], [d for _, d in pairs])["input_ids"]
    assert [t.truncated for t in ours] == [len(ids) > 256 for ids in whole]
    assert any(t.truncated for t in ours)


async def test_a_classifier_names_its_labels_and_softmaxes_as_crossencoder_does(
    classifier_dir: Path,
) -> None:
    from sentence_transformers import CrossEncoder

    texts = sample_texts(12, seed=5)
    inputs: list[Any] = [*texts, *mixed_pairs()[:10]]

    def reference() -> Any:
        model = CrossEncoder(str(classifier_dir), device="cpu")
        # CrossEncoder reads a lone string as one text, a list as pairs.
        return np.vstack(
            [
                model.predict(item if isinstance(item, str) else [item], apply_softmax=True)
                for item in inputs
            ]
        )

    expected = await off(reference)
    async with Engine.from_settings(settings_for(classifier_dir, max_batch_size=4)) as engine:
        result = await engine.score(inputs, truncate=True)
        head = engine.model_info.score_head
    assert head is not None
    assert head.labels == CLASSIFIER_LABELS
    assert result.vectors.shape == (len(inputs), 3)
    np.testing.assert_allclose(activate(result.vectors, "softmax"), expected, atol=1e-5)


async def test_sparse_vectors_equal_sparse_encoder_encode(splade_dir: Path) -> None:
    from sentence_transformers import SparseEncoder

    texts = [*sample_texts(30, seed=8, words=(1, 80)), long_text(400), "a"]
    expected = await off(
        lambda: SparseEncoder(str(splade_dir), device="cpu").encode(texts).to_dense().numpy()
    )
    async with Engine.from_settings(settings_for(splade_dir, max_batch_size=8)) as engine:
        result = await engine.embed_sparse(texts, truncate=True)
    assert result.sparse is not None
    assert len(result.sparse) == len(texts)
    for row, vector in zip(expected, result.sparse, strict=True):
        assert vector.indices.tolist() == np.flatnonzero(row).tolist()
        np.testing.assert_allclose(vector.values, row[vector.indices], atol=1e-5)
        assert 0 < len(vector.indices) < 2000  # most of the 30,522 entries stay zero


async def test_a_task_the_model_cannot_do_is_refused_naming_what_it_does(
    model_dir: Path, reranker_dir: Path, splade_dir: Path
) -> None:
    async with Engine.from_settings(settings_for(reranker_dir)) as engine:
        with pytest.raises(NotThisTask, match="cross-encoder"):
            await engine.embed(["a"])
        with pytest.raises(NotThisTask):
            await engine.embed_sparse(["a"])
    async with Engine.from_settings(settings_for(splade_dir)) as engine:
        with pytest.raises(NotThisTask, match="sparse"):
            await engine.score([("a", "b")])
    async with Engine.from_settings(settings_for(model_dir)) as engine:
        with pytest.raises(NotThisTask, match="embedding model"):
            await engine.score([("a", "b")])
        with pytest.raises(NotThisTask):
            await engine.embed_sparse(["a"])


def test_bf16_passes_the_score_gate_and_onnx_is_refused_for_a_cross_encoder(
    reranker_dir: Path, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path)
    texts = calibration_texts()[:20]  # 1 query × 20 documents: bf16 may be emulated here

    def outputs(dtype: str) -> Any:
        variant = Variant("torch", dtype)
        backend = open_variant(variant, reranker_dir, store, threads=1, device="cpu")()
        return backend, gate_outputs(backend, texts)

    reference_backend, reference = outputs("fp32")
    _, candidate = outputs("bf16")
    figures = measure_outputs(reference_backend, reference, candidate, texts=len(texts))
    assert figures.passed, figures.describe()
    assert "Spearman" in figures.describe()
    # The same figures of the reference against itself are perfect: the gate measures.
    perfect = measure_outputs(reference_backend, reference, reference, texts=len(texts))
    assert perfect.describe() == "mean Spearman 1.00000, top-10 agreement 100.0%"
    with pytest.raises(BackendError, match="ONNX export covers embedding models"):
        choose_variant(reranker_dir, store, backend="onnx", dtype="fp32", threads=1, device="cpu")


# -- reranking with an embedding model ------------------------------------------------

# A small relevance set: for each query, the documents in the only right order.
RELEVANCE = {
    "How do I bake bread at home?": [
        "Mix flour, water, yeast and salt, let the dough rise, then bake it in a hot oven.",
        "Sourdough uses a starter culture instead of packaged yeast.",
        "The stock market fell sharply on Tuesday.",
    ],
    "What causes rain?": [
        "Water vapour in clouds condenses into droplets that fall as rain.",
        "Clouds form when warm, moist air rises and cools.",
        "My cat likes to sleep on the sofa all afternoon.",
    ],
    "Which planet is the largest in our solar system?": [
        "Jupiter is the largest planet in the solar system.",
        "Saturn, the second largest planet, has bright rings.",
        "A good pair of running shoes lasts about 500 miles.",
    ],
}


async def test_rerank_with_an_embedding_model_is_sentence_transformers_cosine(
    model_dir: Path,
) -> None:
    from sentence_transformers import SentenceTransformer, util

    reference = await off(SentenceTransformer, str(model_dir), device="cpu")

    def cosines(query: str, documents: list[str]) -> Any:
        return util.cos_sim(
            reference.encode([query], convert_to_tensor=True),
            reference.encode(documents, convert_to_tensor=True),
        )[0].numpy()

    async with Engine.from_settings(settings_for(model_dir)) as engine:
        for query, right_order in RELEVANCE.items():
            shuffled = [right_order[i] for i in (2, 0, 1)]
            ranking = await rerank(engine, query, shuffled)
            expected = await off(cosines, query, shuffled)
            assert ranking.scoring == "bi-encoder"
            np.testing.assert_allclose(ranking.scores, expected, atol=1e-5)
            assert [shuffled[i] for i in ranking.order()] == right_order, query


async def test_bi_encoder_rerank_uses_the_models_query_and_document_prompts(
    prompted_model_dir: Path,
) -> None:
    from sentence_transformers import SentenceTransformer, util

    query, documents = next(iter(RELEVANCE.items()))

    def cosines() -> Any:
        reference = SentenceTransformer(str(prompted_model_dir), device="cpu")
        return util.cos_sim(
            reference.encode([query], prompt_name="query", convert_to_tensor=True),
            reference.encode(documents, prompt_name="document", convert_to_tensor=True),
        )[0].numpy()

    expected = await off(cosines)
    async with Engine.from_settings(settings_for(prompted_model_dir)) as engine:
        ranking = await rerank(engine, query, documents)
    np.testing.assert_allclose(ranking.scores, expected, atol=1e-5)


async def test_rerank_with_a_cross_encoder_sorts_by_its_sigmoid_scores(
    reranker_dir: Path, cross_encoder: Any
) -> None:
    query = QUERIES[0]
    documents = sample_texts(40, seed=4)
    expected = await off(cross_encoder.predict, [(query, d) for d in documents])
    async with Engine.from_settings(settings_for(reranker_dir)) as engine:
        ranking = await rerank(engine, query, documents)
        raw = await rerank(engine, query, documents, raw_scores=True)
    assert ranking.scoring == "cross-encoder"
    np.testing.assert_allclose(ranking.scores, expected, atol=1e-5)
    assert ranking.order() == np.argsort(-expected, kind="stable").tolist()
    assert ranking.order(5) == ranking.order()[:5]
    assert raw.order() == ranking.order()  # the sigmoid keeps the order
    assert not np.allclose(raw.scores, ranking.scores)
