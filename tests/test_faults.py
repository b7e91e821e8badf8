"""Fault isolation in the engine: a poisoned input fails alone; a dead or hung inference
thread is replaced while the engine reports unhealthy and fails queued work fast.

Fake backend, inline tokenising: every step is driven by events, not by time.
The watchdog runs on a short real limit (0.2 s) because hanging is about time.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import numpy as np
import pytest

from embedloom import BackendError, Engine, Settings, Unavailable
from embedloom.offload import run_in_thread
from embedloom.server import create_app
from embedloom.sharing import SharingPlan
from tests.fakes import FakeBackend, inline, running_engine, signature

_HANG_LIMIT = 0.2


def expected(texts: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.array([signature(t) for t in texts], dtype=np.float32)


class GatedFactory:
    """Hands out the backend; every load after the first waits until ``open()``, so a
    test can see the engine while a replacement model is still loading."""

    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend
        self.loads = 0
        self._gate = threading.Event()

    def __call__(self) -> FakeBackend:
        self.loads += 1
        if self.loads > 1:
            self._gate.wait(timeout=30)
        return self.backend

    def open(self) -> None:
        self._gate.set()


async def admitted(engine: Engine, count: int) -> None:
    """Let the event loop run until ``count`` inputs are admitted (tokenising is inline,
    so each request is queued in the step that admits it)."""
    for _ in range(10_000):
        if engine.statistics().admitted_inputs >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never reached {count} admitted inputs")


async def test_a_poisoned_input_fails_alone_and_its_31_batch_mates_succeed() -> None:
    backend = FakeBackend(fail_on="poison", hang_on="blocker")
    async with running_engine(backend, max_batch_size=32) as engine:
        blocker = asyncio.create_task(engine.embed(["blocker"]))
        await asyncio.to_thread(backend.wait_entered)
        texts = [f"text {i}" for i in range(31)]
        texts.insert(17, "poison")
        calls = [asyncio.create_task(engine.embed([t])) for t in texts]
        await admitted(engine, 33)
        backend.unhang()
        results = await asyncio.gather(*calls, return_exceptions=True)
        await blocker
        stats = engine.statistics()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1
    assert results.index(failures[0]) == 17
    assert isinstance(failures[0], BackendError)
    assert "input 0 of this request (RuntimeError)" in failures[0].message
    assert "poisoned" not in failures[0].message, "the backend's own text stays in the log"
    for text, result in zip(texts, results, strict=True):
        if text != "poison":
            np.testing.assert_array_equal(result.vectors, expected([text]))  # type: ignore[union-attr]
    assert len(backend.batches[1]) == 32, "all 32 were batched together first"
    assert ["poison"] in backend.batches, "bisected down to the poisoned input alone"
    assert stats.batches_split == 5  # 32 → 16 → 8 → 4 → 2 → 1
    assert stats.requests_failed == 1
    assert stats.admitted_inputs == 0


async def test_every_input_of_a_failing_model_fails_and_nothing_is_left_admitted() -> None:
    backend = FakeBackend(fail_on="a", hang_on="blocker")
    async with running_engine(backend, max_batch_size=8) as engine:
        blocker = asyncio.create_task(engine.embed(["blocker"]))
        await asyncio.to_thread(backend.wait_entered)
        mixed = asyncio.create_task(engine.embed(["a", "b", "c", "a"]))
        await admitted(engine, 5)
        backend.unhang()
        with pytest.raises(BackendError, match="input 0 of this request"):
            await mixed
        await blocker
        await engine.drain()
        assert engine.statistics().admitted_inputs == 0


async def test_a_hung_inference_thread_is_replaced_and_queued_requests_fail_fast() -> None:
    backend = FakeBackend(hang_on="stuck")
    factory = GatedFactory(backend)
    async with running_engine(backend, factory=factory, inference_timeout=_HANG_LIMIT) as engine:
        stuck = asyncio.create_task(engine.embed(["stuck"]))
        await asyncio.to_thread(backend.wait_entered)
        waiting = asyncio.create_task(engine.embed(["waiting"]))
        await admitted(engine, 2)
        with pytest.raises(Unavailable, match="restarting"):
            await waiting
        with pytest.raises(BackendError, match=r"stopped answering.*hung"):
            await stuck
        assert not engine.healthy
        assert "inference thread 0 hung" in (engine.unhealthy_reason or "")
        with pytest.raises(Unavailable, match="restarting"):
            await engine.embed(["while restarting"])
        factory.open()
        await asyncio.wait_for(engine.wait_until_serving(), 30)
        assert engine.healthy
        result = await engine.embed(["after"])
        np.testing.assert_array_equal(result.vectors, expected(["after"]))
        # The abandoned thread returning late must not deliver anything.
        backend.unhang()
        await engine.drain()
        stats = engine.statistics()
    assert stats.inference_restarts == 1
    assert stats.worker.restarts == 1
    assert stats.admitted_inputs == 0
    assert factory.loads == 2


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_dead_inference_thread_is_replaced() -> None:
    backend = FakeBackend(die_on="fatal")
    async with running_engine(backend, inference_timeout=_HANG_LIMIT) as engine:
        with pytest.raises(BackendError, match="inference thread 0 died"):
            await engine.embed(["fatal"])
        await asyncio.wait_for(engine.wait_until_serving(), 30)
        result = await engine.embed(["alive again"])
        stats = engine.statistics()
    np.testing.assert_array_equal(result.vectors, expected(["alive again"]))
    assert stats.inference_restarts == 1


async def test_a_hung_replica_is_replaced_while_the_other_keeps_its_work() -> None:
    backend = FakeBackend(hang_on="stuck")
    factory = GatedFactory(backend)
    factory.loads = -1  # two replicas load at start
    plan = SharingPlan("replicas", 2, 2, 1, 2, "test")
    async with running_engine(
        backend, factory=factory, inference_timeout=_HANG_LIMIT, sharing=plan
    ) as engine:
        stuck = asyncio.create_task(engine.embed(["stuck"]))
        await asyncio.to_thread(backend.wait_entered)
        fine = await engine.embed(["on the other replica"])  # runs beside the stuck one
        np.testing.assert_array_equal(fine.vectors, expected(["on the other replica"]))
        with pytest.raises(BackendError, match="hung"):
            await stuck
        factory.open()
        await asyncio.wait_for(engine.wait_until_serving(), 30)
        assert engine.statistics().worker.alive


async def test_health_is_503_while_a_hung_thread_is_replaced() -> None:
    backend = FakeBackend(hang_on="stuck")
    factory = GatedFactory(backend)
    async with running_engine(backend, factory=factory, inference_timeout=_HANG_LIMIT) as engine:
        app = create_app(engine.settings, engine)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/health")).status_code == 200
            stuck = asyncio.create_task(client.post("/embed", json={"inputs": "stuck"}))
            await asyncio.to_thread(backend.wait_entered)
            queued_reply = asyncio.create_task(client.post("/embed", json={"inputs": "queued"}))
            reply = await queued_reply
            assert reply.status_code == 503
            assert "restarting" in reply.json()["error"]
            assert (await stuck).status_code == 500
            health = await client.get("/health")
            assert health.status_code == 503
            assert "hung" in health.json()["error"]
            factory.open()
            await asyncio.wait_for(engine.wait_until_serving(), 30)
            assert (await client.get("/health")).status_code == 200
            assert (await client.post("/embed", json={"inputs": "again"})).status_code == 200


async def test_a_poisoned_input_among_32_fails_alone_on_the_real_model(
    model_dir: Any, reference_encode: Any
) -> None:
    """The same through the real torch model: a fault injected for one input (the
    model itself has no input that makes it raise), 31 correct vectors."""
    from embedloom.backends.base import TokenizedInput
    from embedloom.backends.torch import TorchBackend

    poison = "this sentence makes the model raise"

    class PoisonedTorch(TorchBackend):
        def embed(self, batch: Any) -> Any:
            marked = self.tokenize([poison])[0].input_ids
            if any(isinstance(item, TokenizedInput) and item.input_ids == marked for item in batch):
                raise RuntimeError("injected fault")
            return super().embed(batch)

    texts = [f"request number {i} about the weather in town {i * 7}" for i in range(31)]
    texts.insert(5, poison)
    engine = Engine(
        lambda: PoisonedTorch(model_dir, threads=1), settings=Settings(max_batch_size=32)
    )
    async with engine:
        results = await asyncio.gather(*(engine.embed([t]) for t in texts), return_exceptions=True)
        stats = engine.statistics()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1
    assert results.index(failures[0]) == 5
    good = [r.vectors[0] for r in results if not isinstance(r, BaseException)]
    reference = await run_in_thread(reference_encode, [t for t in texts if t != poison])
    np.testing.assert_allclose(np.stack(good), reference, atol=1e-5)
    assert stats.batches_split >= 1


async def test_an_abandoned_thread_returning_late_leaves_the_stop_signals_to_live_ones() -> None:
    """Closing after a restart ends every live thread, however late the abandoned one
    returns and whatever it takes off the hand-off queue on its way out."""
    backend = FakeBackend(hang_on="stuck")
    engine = Engine(
        lambda: backend, settings=Settings(inference_timeout=_HANG_LIMIT), offload=inline
    )
    await engine.start()
    stuck = asyncio.create_task(engine.embed(["stuck"]))
    with pytest.raises(BackendError, match="hung"):
        await stuck
    await asyncio.wait_for(engine.wait_until_serving(), 30)
    backend.unhang()  # the abandoned thread returns now, during or before close
    await asyncio.wait_for(engine.close(grace=5), 30)
    assert not engine.statistics().worker.alive
