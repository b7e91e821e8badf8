"""The real default model through the backend, the engine and the Embedder.

The reference is sentence-transformers itself: ``SentenceTransformer(path).encode``.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedloom import Embedder, Engine, InputTooLong, Settings
from embedloom.backends.torch import TorchBackend
from tests.helpers import long_text, sample_texts

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> TorchBackend:
    return TorchBackend(model_dir, device="cpu")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def test_backend_describes_the_model(backend: TorchBackend) -> None:
    assert backend.dimensions == 384
    assert backend.max_input_tokens == 256
    assert backend.normalizes, "all-MiniLM-L6-v2 ends in a Normalize module"


def test_backend_matches_sentence_transformers(
    backend: TorchBackend, texts: list[str], reference_encode: Any
) -> None:
    ours = backend.embed(backend.tokenize(texts))
    assert ours.dtype == np.float32
    assert cosines(ours, reference_encode(texts)).min() >= 0.99999


def test_a_text_alone_and_padded_among_long_ones_gives_the_same_vector(
    backend: TorchBackend,
) -> None:
    text = "a short sentence"
    alone = backend.embed(backend.tokenize([text]))
    crowd = [long_text(200), text, long_text(250), "x " * 100]
    padded = backend.embed(backend.tokenize(crowd))[1:2]
    assert cosines(alone, padded)[0] >= 0.99999


def test_tokenizer_flags_truncation(backend: TorchBackend) -> None:
    short, long = backend.tokenize(["hello world", long_text(400)])
    assert not short.truncated
    assert short.n_tokens == 4  # [CLS] hello world [SEP]
    assert long.truncated
    assert long.n_tokens == 256
    assert backend.tokenize([long_text(100)])[0].n_tokens == 100, "the helper's promise"


def test_tokenizing_from_many_threads_at_once(backend: TorchBackend) -> None:
    texts = sample_texts(50)
    expected = [t.input_ids for t in backend.tokenize(texts)]
    barrier = threading.Barrier(8)
    results: list[list[tuple[int, ...]]] = []

    def work() -> None:
        barrier.wait()
        results.append([t.input_ids for t in backend.tokenize(texts)])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 8


ENGINE_TEXTS = sample_texts(40, seed=11)


@pytest.fixture(scope="module")
def engine_reference(reference_encode: Any) -> np.ndarray:
    return np.asarray(reference_encode(ENGINE_TEXTS))


async def test_engine_matches_sentence_transformers_whatever_the_batch(
    backend: TorchBackend, engine_reference: np.ndarray
) -> None:
    texts, reference = ENGINE_TEXTS, engine_reference
    # Counting admission: the burst below is about equal vectors, not admission.
    settings = Settings(max_batch_size=8, admission="count")
    async with Engine(lambda: backend, settings=settings) as engine:
        # Each text alone, all at once, and in one big request: same vectors.
        alone = [await engine.embed([t]) for t in texts[:5]]
        together = await asyncio.gather(*(engine.embed([t]) for t in texts))
        whole = await engine.embed(texts)
        crowded = await engine.embed([long_text(300), texts[0], long_text(180)], truncate=True)
    for index, result in enumerate(alone):
        assert cosines(result.vectors, reference[index : index + 1])[0] >= 0.99999
    assert cosines(np.vstack([r.vectors for r in together]), reference).min() >= 0.99999
    assert cosines(whole.vectors, reference).min() >= 0.99999
    assert cosines(crowded.vectors[1:2], reference[:1])[0] >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(whole.vectors, axis=1), 1.0, rtol=1e-5)


async def test_engine_refuses_or_truncates_over_long_input(backend: TorchBackend) -> None:
    async with Engine(lambda: backend) as engine:
        with pytest.raises(InputTooLong):
            await engine.embed([long_text(300)])
        result = await engine.embed([long_text(300)], truncate=True)
    assert result.prompt_tokens == 256


def test_embedder_is_a_thread_safe_script_handle(reference_encode: Any) -> None:
    texts = sample_texts(30, seed=5)
    reference = reference_encode(texts)
    with Embedder() as embedder:
        single = embedder.embed(texts[0])
        assert single.shape == (384,)
        barrier = threading.Barrier(6)
        outputs: dict[int, np.ndarray] = {}

        def work(worker: int) -> None:
            barrier.wait()
            outputs[worker] = embedder.embed(texts[worker::6])

        threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert embedder.statistics().requests_failed == 0
    assert cosines(single[None, :], reference[:1])[0] >= 0.99999
    for worker, vectors in outputs.items():
        assert cosines(vectors, reference[worker::6]).min() >= 0.99999
    with pytest.raises(RuntimeError, match="closed"):
        embedder.embed("after close")


def test_embedder_splits_calls_larger_than_the_admission_bound(reference_encode: Any) -> None:
    texts = sample_texts(50, seed=9)
    with Embedder(settings=Settings.from_environment().replace(max_queued_inputs=8)) as embedder:
        vectors = embedder.embed(texts)
    assert vectors.shape == (50, 384)
    assert cosines(vectors, reference_encode(texts)).min() >= 0.99999


def test_embedder_takes_the_models_prompts(prompted_model_dir: Path, reference_model: Any) -> None:
    texts = sample_texts(4, seed=13)
    with Embedder(str(prompted_model_dir)) as embedder:
        vectors = embedder.embed(texts, prompt_name="query")
    # The prompted model is MiniLM with prompts: its "query" prompt is this prefix.
    expected = reference_model.encode(["query: " + text for text in texts])
    assert cosines(vectors, expected).min() >= 0.99999


@pytest.mark.parametrize(
    ("settings", "replicas", "reported"),
    [
        (Settings(sharing="replicas", threads=2, backend="torch", dtype="fp32"), 2, (1, 1)),
        (Settings(sharing="dedicated", threads=2, backend="torch", dtype="fp32"), 1, (2,)),
        (Settings(sharing="locked", threads=2, backend="torch", dtype="fp32"), 1, (2, 2, 2, 2)),
    ],
    ids=["replicas", "dedicated", "locked"],
)
async def test_the_budget_is_what_each_backend_reports(
    settings: Settings, replicas: int, reported: tuple[int, ...]
) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        async with Engine.from_settings(settings) as engine:
            worker = engine.statistics().worker
            result = await engine.embed(["budgeted"])
    finally:
        torch.set_num_threads(before)
    assert worker.replicas == replicas
    assert worker.reported_threads == reported
    assert result.vectors.shape == (1, 384)
