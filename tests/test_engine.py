"""The engine's scheduling with a fake backend: deterministic, no sleeps.

Tokenisation is run inline (``offload=inline``), so one ``await asyncio.sleep(0)``
lets a new request reach the queue; the fake backend holds each batch until the
test releases it, so "the model is busy" is a fact, not a race.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any

import numpy as np
import pytest

from embedloom import (
    BackendError,
    Engine,
    EngineState,
    InputTooLong,
    InvalidInput,
    Overloaded,
    Settings,
    TooManyInputs,
    Unavailable,
)
from embedloom.prompts import ModelPrompts
from tests.fakes import FakeBackend, FakeClock, inline, running_engine, signature


def running(
    backend: FakeBackend, clock: FakeClock | None = None, **settings: Any
) -> AbstractAsyncContextManager[Engine]:
    """An engine on ``backend``, started (its warm-up batch already run)."""
    return running_engine(backend, clock=clock, **settings)


async def until_queued(engine: Engine, inputs: int) -> None:
    """Let new requests take their first step (inline tokenising puts them in the queue)."""
    await asyncio.sleep(0)
    assert engine.statistics().queued_inputs == inputs


def expected(texts: list[str]) -> np.ndarray:
    return np.array([signature(t) for t in texts], dtype=np.float32)


async def test_rows_come_back_in_input_order_across_batches() -> None:
    backend = FakeBackend()
    async with running(backend, max_batch_size=2) as engine:
        texts = ["a", "bbbbbbbbbb", "cc", "dddddddd", "eee"]
        result = await engine.embed(texts)
    np.testing.assert_array_equal(result.vectors, expected(texts))
    assert result.prompt_tokens == sum(len(t) for t in texts)
    assert len(backend.batches) >= 3
    assert sorted(t for batch in backend.batches for t in batch) == sorted(texts)


async def test_concurrent_requests_get_their_own_rows() -> None:
    backend = FakeBackend()
    async with running(backend, max_batch_size=8) as engine:
        requests = [[f"r{i}-{j}" * (1 + (i + j) % 5) for j in range(1 + i % 4)] for i in range(60)]
        results = await asyncio.gather(*(engine.embed(texts) for texts in requests))
        stats = engine.statistics()
    for texts, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result.vectors, expected(texts))
    assert stats.requests_completed == 61  # with the warm-up
    assert stats.admitted_inputs == 0
    mixed = [batch for batch in backend.batches if len({t.split("-")[0] for t in batch}) > 1]
    assert mixed, "inputs of different requests should share batches"


async def test_admission_bound_fails_fast_and_frees_on_completion() -> None:
    backend = FakeBackend(hold_batches=True)
    async with running(backend, max_queued_inputs=4, max_client_batch_size=4) as engine:
        first = asyncio.create_task(engine.embed(["aaa", "bbb", "ccc"]))
        await asyncio.to_thread(backend.wait_entered)
        with pytest.raises(Overloaded) as refused:
            await engine.embed(["ddd", "eee"])
        assert refused.value.retry_after >= 1
        assert engine.statistics().requests_rejected == 1
        backend.release()
        await first
        assert engine.statistics().admitted_inputs == 0
        backend.release()
        result = await engine.embed(["ddd", "eee"])
    np.testing.assert_array_equal(result.vectors, expected(["ddd", "eee"]))


@pytest.mark.parametrize("shape", ["one request of 8", "eight requests of 1"])
async def test_admission_counts_inputs_not_requests(shape: str) -> None:
    """Normal priority may fill 90% of a bound of 10: nine inputs (a high-priority one
    running, eight normal ones), however the eight arrive."""
    backend = FakeBackend(hold_batches=True)
    async with running(backend, max_queued_inputs=10, max_batch_size=1) as engine:
        blocker = asyncio.create_task(engine.embed(["blocker"], priority="high"))
        await asyncio.to_thread(backend.wait_entered)
        groups = (
            [[f"t{i}" for i in range(8)]]
            if shape == "one request of 9"
            else [[f"t{i}"] for i in range(8)]
        )
        calls = [asyncio.create_task(engine.embed(group)) for group in groups]
        await asyncio.sleep(0)  # tokenising is inline: each call is admitted in its first step
        assert engine.statistics().admitted_inputs == 9
        with pytest.raises(Overloaded):
            await engine.embed(["one too many"])
        backend.release(100)
        await asyncio.gather(blocker, *calls)


async def test_more_inputs_than_the_bound_can_never_be_admitted() -> None:
    async with running(FakeBackend(), max_queued_inputs=4, max_client_batch_size=2) as engine:
        with pytest.raises(TooManyInputs, match="5 inputs"):
            await engine.embed(["a"] * 5)


async def test_cancelled_request_leaves_the_queue_before_model_time() -> None:
    backend = FakeBackend(hold_batches=True)
    async with running(backend, max_batch_size=8) as engine:
        first = asyncio.create_task(engine.embed(["first"]))
        await asyncio.to_thread(backend.wait_entered)
        doomed = asyncio.create_task(engine.embed(["x1", "x2", "x3"]))
        await until_queued(engine, 3)

        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        stats = engine.statistics()
        assert stats.queued_inputs == 0
        assert stats.inputs_dropped == 3
        assert stats.requests_cancelled == 1
        assert stats.admitted_inputs == 1

        backend.release()
        await first
    assert all("x1" not in batch for batch in backend.batches)


async def test_cancelled_request_in_a_waiting_batch_is_skipped_by_the_worker() -> None:
    backend = FakeBackend(hold_batches=True)
    async with running(backend, max_batch_size=2) as engine:
        first = asyncio.create_task(engine.embed(["first"]))
        await asyncio.to_thread(backend.wait_entered)
        # Two inputs fill a batch, so it is handed over while the model is busy.
        doomed = asyncio.create_task(engine.embed(["x1", "x2"]))
        await asyncio.sleep(0)
        stats = engine.statistics()
        assert stats.queued_inputs == 0
        assert stats.running_batches == 2

        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        backend.release()
        await first
        await engine.drain()
        stats = engine.statistics()
    assert stats.inputs_dropped == 2
    assert stats.admitted_inputs == 0
    assert backend.batches == [["first"]]


async def test_a_failing_batch_fails_its_requests_only() -> None:
    backend = FakeBackend(fail_on="poison")
    async with running(backend, max_batch_size=1) as engine:
        good, bad = await asyncio.gather(
            engine.embed(["fine"]), engine.embed(["poison"]), return_exceptions=True
        )
        assert isinstance(bad, BackendError)
        assert isinstance(bad.__cause__, RuntimeError)
        assert not isinstance(good, BaseException)
        np.testing.assert_array_equal(good.vectors, expected(["fine"]))
        assert engine.healthy
        after = await engine.embed(["still fine"])
        stats = engine.statistics()
    np.testing.assert_array_equal(after.vectors, expected(["still fine"]))
    assert stats.requests_failed == 1
    assert stats.admitted_inputs == 0


async def test_over_long_input_is_refused_unless_truncation_is_allowed() -> None:
    backend = FakeBackend(max_input_tokens=8)
    async with running(backend) as engine:
        with pytest.raises(InputTooLong) as refused:
            await engine.embed(["short", "x" * 20])
        assert refused.value.index == 1
        assert engine.statistics().admitted_inputs == 0
        result = await engine.embed(["x" * 20], truncate=True)
    np.testing.assert_array_equal(result.vectors, expected(["x" * 8]))


@pytest.mark.parametrize(
    ("texts", "options", "match"),
    [
        ([], {}, "must not be empty"),
        (["ok", ""], {}, "input 1 is an empty string"),
        ("just a string", {}, "list of strings"),
        (["ok", 3], {}, "input 1 is not a string"),
        ([[1, 2], "ok"], {}, "input 1 is a string"),
        ([[1, 2], []], {}, "input 1 is an empty list of token ids"),
        ([[1, 2]], {"prompt_name": "query"}, "not one of the model's prompts"),
        (["ok"], {"truncation_direction": "up"}, "right or left"),
        (["ok"], {"dimensions": 0}, "between 1 and 4"),
        (["ok"], {"dimensions": 5}, "between 1 and 4"),
        (["ok"], {"dimensions": True}, "integer"),
    ],
)
async def test_invalid_calls_name_the_problem(texts: Any, options: Any, match: str) -> None:
    async with running(FakeBackend()) as engine:
        with pytest.raises(InvalidInput, match=match):
            await engine.embed(texts, **options)
        assert engine.statistics().admitted_inputs == 0


async def test_normalisation_follows_the_model_unless_asked() -> None:
    backend = FakeBackend(normalizes=True)
    async with running(backend) as engine:
        default = (await engine.embed(["abc"])).vectors[0]
        raw = (await engine.embed(["abc"], normalize=False)).vectors[0]
        short = (await engine.embed(["abc"], dimensions=2)).vectors[0]
    signature_abc = np.array(signature("abc"), dtype=np.float32)
    np.testing.assert_allclose(default, signature_abc / np.linalg.norm(signature_abc), rtol=1e-6)
    np.testing.assert_array_equal(raw, signature_abc)
    assert short.shape == (2,)
    np.testing.assert_allclose(np.linalg.norm(short), 1.0, rtol=1e-6)
    np.testing.assert_allclose(short, signature_abc[:2] / np.linalg.norm(signature_abc[:2]))


async def test_lifecycle_start_drain_close() -> None:
    backend = FakeBackend(hold_batches=True)
    engine = Engine(lambda: backend, offload=inline)
    with pytest.raises(Unavailable):
        await engine.embed(["too early"])
    backend.release()
    await engine.start()
    backend.wait_entered()
    assert engine.state is EngineState.RUNNING
    assert engine.healthy
    with pytest.raises(RuntimeError, match="cannot start"):
        await engine.start()

    admitted = asyncio.create_task(engine.embed(["admitted"]))
    await asyncio.to_thread(backend.wait_entered)
    draining = asyncio.create_task(engine.drain())
    await asyncio.sleep(0)
    assert engine.state is EngineState.DRAINING
    assert not engine.healthy
    with pytest.raises(Unavailable, match="draining"):
        await engine.embed(["late"])
    assert not draining.done()

    backend.release()
    np.testing.assert_array_equal((await admitted).vectors, expected(["admitted"]))
    await draining
    await engine.close()
    assert engine.state is EngineState.CLOSED
    with pytest.raises(Unavailable, match="closed"):
        await engine.embed(["after"])
    with pytest.raises(RuntimeError, match="cannot start"):
        await engine.start()


async def test_close_after_grace_fails_what_never_ran() -> None:
    backend = FakeBackend(hold_batches=True)
    engine = Engine(lambda: backend, settings=Settings(max_batch_size=1), offload=inline)
    backend.release()
    await engine.start()
    backend.wait_entered()
    running_request = asyncio.create_task(engine.embed(["running"]))
    await asyncio.to_thread(backend.wait_entered)
    queued = asyncio.create_task(engine.embed(["queued", "more"]))
    await until_queued(engine, 1)  # one input waits in the hand-off, one in the queue

    closing = asyncio.create_task(engine.close(grace=0))
    with pytest.raises(Unavailable, match="closed before"):
        await queued
    backend.release(10)
    await closing
    np.testing.assert_array_equal((await running_request).vectors, expected(["running"]))


async def test_model_that_fails_to_load_fails_start() -> None:
    def broken() -> FakeBackend:
        raise OSError("weights are missing")

    engine = Engine(broken, offload=inline)
    with pytest.raises(BackendError, match="weights are missing"):
        await engine.start()
    assert engine.state is EngineState.CLOSED


async def test_queue_wait_is_measured_on_the_injected_clock() -> None:
    backend = FakeBackend(hold_batches=True)
    clock = FakeClock()
    async with running(backend, clock) as engine:
        first = asyncio.create_task(engine.embed(["first"]))
        await asyncio.to_thread(backend.wait_entered)
        second = asyncio.create_task(engine.embed(["second"]))
        await until_queued(engine, 1)
        clock.now += 2.5
        backend.release(2)
        await asyncio.gather(first, second)
        waits = engine.statistics().queue_seconds
    # warm-up, first and second were queued; only the second waited, 2.5 s.
    assert waits.count == 3
    assert waits.total == pytest.approx(2.5)


async def test_retry_after_follows_the_measured_drain_rate() -> None:
    clock = FakeClock()

    class SlowBackend(FakeBackend):
        def embed(self, batch: Any) -> Any:
            clock.now += 2.0  # every batch takes two seconds of fake time
            return super().embed(batch)

    backend = SlowBackend(hold_batches=True)
    async with running(
        backend, clock, max_batch_size=4, max_queued_inputs=8, admission="count"
    ) as engine:
        backend.release()
        await engine.embed(["a", "b", "c", "d"])  # 4 inputs in 2 s: 2 inputs/s
        held = asyncio.create_task(engine.embed(["e", "f", "g", "h", "i", "j", "k", "l"]))
        await asyncio.to_thread(backend.wait_entered)
        with pytest.raises(Overloaded) as refused:
            await engine.embed(["m"])
        backend.release(2)
        await held
    # Rates seen: the warm-up's 1 input in 2 s, then 4 inputs in 2 s; smoothed,
    # 0.5 + 0.2 × (2 - 0.5) = 0.8 inputs/s, so 8 admitted inputs drain in 10 s.
    assert refused.value.retry_after == pytest.approx(10.0)


async def test_each_request_says_where_its_time_went() -> None:
    backend = FakeBackend(hold_batches=True)
    clock = FakeClock()
    async with running(backend, clock) as engine:
        first = asyncio.create_task(engine.embed(["first"]))
        await asyncio.to_thread(backend.wait_entered)
        second = asyncio.create_task(engine.embed(["second"]))
        await until_queued(engine, 1)
        clock.now += 2.0  # the first runs for 2 s while the second waits
        backend.release()
        await first
        clock.now += 0.5
        backend.release()
        done = await second
    assert (done.queue_seconds, done.inference_seconds) == (pytest.approx(2.0), 0.5)
    assert (await first).inference_seconds == pytest.approx(2.0)


async def test_a_prompt_goes_before_each_text_by_name_or_by_default() -> None:
    backend = FakeBackend()
    prompts = ModelPrompts({"query": "q: ", "doc": "d: "})
    async with running_engine(backend, prompts=prompts) as engine:
        named = await engine.embed(["ab"], prompt_name="query")
        plain = await engine.embed(["ab"])
    np.testing.assert_array_equal(named.vectors, expected(["q: ab"]))
    np.testing.assert_array_equal(plain.vectors, expected(["ab"]))
    backend = FakeBackend()
    async with running_engine(backend, prompts=prompts.with_default("doc", None)) as engine:
        by_default = await engine.embed(["ab"])
        ids = await engine.embed([[ord("a"), ord("b")]])  # token ids take no default prompt
        with pytest.raises(InvalidInput, match="doc, query"):
            await engine.embed(["ab"], prompt_name="summary")
    np.testing.assert_array_equal(by_default.vectors, expected(["d: ab"]))
    np.testing.assert_array_equal(ids.vectors, expected(["ab"]))


async def test_token_vectors_come_back_per_input_in_batches_of_their_own() -> None:
    backend = FakeBackend(hold_batches=True)
    async with running(backend) as engine:
        pooled = asyncio.create_task(engine.embed(["held"]))
        await asyncio.to_thread(backend.wait_entered)
        tokens = asyncio.create_task(engine.embed_tokens(["ab", "xyz"]))
        more = asyncio.create_task(engine.embed(["cd"]))
        await until_queued(engine, 3)
        backend.release(3)
        result, _, _ = await asyncio.gather(tokens, pooled, more)
    assert result.token_vectors is not None
    assert [rows.shape for rows in result.token_vectors] == [(2, 4), (3, 4)]
    np.testing.assert_array_equal(result.token_vectors[1], expected(["x", "y", "z"]))
    # Held, then the pooled one (the shorter request goes first: fairness.py), then
    # the tokens batch: never one batch for both tasks.
    assert backend.batches == [["held"], ["cd"], ["ab", "xyz"]]


async def test_left_truncation_keeps_the_end_of_an_input() -> None:
    backend = FakeBackend(max_input_tokens=8)
    async with running(backend) as engine:
        left = await engine.embed(["xxxxabcdefgh"], truncate=True, truncation_direction="left")
        right = await engine.embed(["abcdefghxxxx"], truncate=True)
    np.testing.assert_array_equal(left.vectors, expected(["abcdefgh"]))
    np.testing.assert_array_equal(right.vectors, expected(["abcdefgh"]))


async def test_statistics_and_repr_show_state() -> None:
    async with running(FakeBackend()) as engine:
        await engine.embed(["abc", "defgh"])
        stats = engine.statistics()
        text = repr(engine)
    assert stats.state == "running"
    assert stats.inputs_embedded == 3  # with the warm-up
    assert stats.batches_run >= 1
    assert stats.batch_size.count == stats.batches_run
    assert stats.input_tokens == len("warm up") + 3 + 5
    assert stats.worker.strategy == "dedicated"
    assert stats.worker.alive
    assert "state=running" in text
    assert "admitted=0/" in text
