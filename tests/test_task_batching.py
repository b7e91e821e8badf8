"""A cross-encoder's pairs go through the same scheduler as embeddings: batched
with other requests' inputs, split across batches, admitted by pairs. The fake
backend holds batches until the test lets them go: deterministic, no sleeps.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedloom import NotThisTask, Overloaded, TooManyInputs
from tests.fakes import PAIR_SEPARATOR, FakeBackend, running_engine, signature


def scores_of(pairs: list[tuple[str, str]]) -> np.ndarray:
    """The fake cross-encoder's score of each pair: one column."""
    return np.array([[signature(q + PAIR_SEPARATOR + d)[0]] for q, d in pairs], dtype=np.float32)


async def test_pairs_of_concurrent_requests_share_batches_and_each_gets_its_own_scores() -> None:
    backend = FakeBackend(kind="cross-encoder", hold_batches=True)
    async with running_engine(backend, max_batch_size=16) as engine:
        blocker = asyncio.create_task(engine.score([("hold", "the model")]))
        await asyncio.to_thread(backend.wait_entered)
        requests = [[(f"q{i}", f"doc {i}-{j}") for j in range(3)] for i in range(6)]
        calls = [asyncio.create_task(engine.score(pairs)) for pairs in requests]
        await asyncio.sleep(0)  # tokenising is inline: each call is queued in its first step
        assert engine.statistics().admitted_inputs == 19  # a batch ahead is already planned
        backend.release(100)
        await blocker
        results = await asyncio.gather(*calls)
        stats = engine.statistics()
    for pairs, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result.vectors, scores_of(pairs))
    # The 18 pairs queued behind the blocker fill batches across requests.
    assert max(len(batch) for batch in backend.batches) == 16
    assert stats.batches_shared >= 1
    assert stats.batches_shared == sum(
        len({text.split(PAIR_SEPARATOR)[0] for text in batch}) > 1 for batch in backend.batches
    )


async def test_one_request_of_1000_pairs_is_split_across_batches_and_answered_once() -> None:
    backend = FakeBackend(kind="cross-encoder")
    pairs = [("query", f"document {i} " + "x" * (i % 37)) for i in range(1000)]
    async with running_engine(backend, max_batch_size=32) as engine:
        result = await engine.score(pairs)
        stats = engine.statistics()
    np.testing.assert_array_equal(result.vectors, scores_of(pairs))
    assert stats.batches_run >= 1000 // 32 + 1  # with the warm-up's
    assert stats.inputs_embedded == 1001
    assert stats.batches_shared == 0  # one request alone shares with nobody
    assert sum(len(batch) for batch in backend.batches) == 1000


async def test_admission_counts_a_rerank_by_its_pairs() -> None:
    backend = FakeBackend(kind="cross-encoder", hold_batches=True)
    async with running_engine(backend, max_queued_inputs=120, max_batch_size=8) as engine:
        with pytest.raises(TooManyInputs):
            await engine.score([("q", f"d{i}") for i in range(121)])
        first = asyncio.create_task(engine.score([("q", f"d{i}") for i in range(100)]))
        await asyncio.to_thread(backend.wait_entered)
        with pytest.raises(Overloaded):
            await engine.score([("q", f"e{i}") for i in range(30)])
        backend.release(100)
        assert len((await first).vectors) == 100
        assert engine.statistics().admitted_inputs == 0


async def test_a_cross_encoder_engine_refuses_to_embed() -> None:
    async with running_engine(FakeBackend(kind="cross-encoder")) as engine:
        with pytest.raises(NotThisTask):
            await engine.embed(["a"])
        assert engine.statistics().requests_admitted == 1  # the warm-up only
