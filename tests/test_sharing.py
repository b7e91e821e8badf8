"""Sharing strategies and the thread budget: plans (pure) and workers (real threads)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import numpy as np
import pytest

from embedloom import Engine, Settings
from embedloom.config import SettingsError
from embedloom.sharing import SharingPlan, plan_sharing
from embedloom.threads import cgroup_cpu_quota, usable_cores
from tests.fakes import FakeBackend, inline, signature


def test_auto_on_cpu_splits_the_budget_into_single_thread_replicas() -> None:
    plan = plan_sharing(Settings(), cores=2, gpus=0)
    assert (plan.strategy, plan.replicas, plan.threads_per_replica) == ("replicas", 2, 1)
    assert plan.compute_threads == 2
    assert "measured" in plan.reason


def test_auto_with_one_core_or_a_gpu_is_dedicated() -> None:
    assert plan_sharing(Settings(), cores=1, gpus=0).strategy == "dedicated"
    on_gpu = plan_sharing(Settings(), cores=16, gpus=1)
    assert (on_gpu.strategy, on_gpu.replicas, on_gpu.threads_per_replica) == ("dedicated", 1, 16)


def test_auto_caps_replicas_and_gives_the_rest_to_intra_op_threads() -> None:
    plan = plan_sharing(Settings(), cores=16, gpus=0)
    assert (plan.replicas, plan.threads_per_replica, plan.compute_threads) == (4, 4, 16)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (Settings(sharing="dedicated", threads=2), ("dedicated", 1, 1, 2)),
        (Settings(sharing="replicas", threads=2), ("replicas", 2, 2, 1)),
        (Settings(sharing="replicas", replicas=2, threads=5), ("replicas", 2, 2, 2)),
        (Settings(sharing="locked", threads=2), ("locked", 1, 4, 2)),
    ],
)
def test_explicit_strategies(settings: Settings, expected: tuple[str, int, int, int]) -> None:
    plan = plan_sharing(settings, cores=8, gpus=0)
    assert (
        plan.strategy,
        plan.replicas,
        plan.inference_threads,
        plan.threads_per_replica,
    ) == expected
    assert plan.compute_threads <= plan.budget


def test_more_replicas_than_the_budget_is_refused() -> None:
    with pytest.raises(SettingsError, match="3 replicas need at least 3 compute threads"):
        plan_sharing(Settings(sharing="replicas", replicas=3, threads=2), cores=8, gpus=0)


def test_replicas_flag_only_with_the_replicas_strategy() -> None:
    with pytest.raises(SettingsError, match="--replicas applies to --sharing replicas"):
        plan_sharing(Settings(sharing="dedicated", replicas=2), cores=8, gpus=0)


def test_cgroup_quotas_limit_usable_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    cores = usable_cores(tmp_path)
    assert cores.usable == min(cores.affinity, 2), "a quota of 1.5 CPUs rounds up"
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_quota(tmp_path) == 0.5
    assert usable_cores(tmp_path).usable == 1


def plan_for(strategy: str) -> SharingPlan:
    settings = Settings(sharing=strategy, threads=2)  # type: ignore[arg-type]
    return plan_sharing(settings, cores=2, gpus=0)


STRATEGIES = ["dedicated", "replicas", "locked"]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_every_request_gets_its_own_rows_under_each_strategy(strategy: str) -> None:
    backend = FakeBackend()
    requests = [[f"{i}-{j}" * (1 + (i * j) % 4) for j in range(1 + i % 5)] for i in range(64)]
    async with Engine(
        lambda: backend, settings=Settings(max_batch_size=8), sharing=plan_for(strategy)
    ) as engine:
        results = await asyncio.gather(*(engine.embed(texts) for texts in requests))
        stats = engine.statistics()
    for texts, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(
            result.vectors, np.array([signature(t) for t in texts], dtype=np.float32)
        )
    assert stats.worker.strategy == strategy
    assert stats.requests_completed == 65  # with the warm-up
    if strategy == "locked":
        owners = [{text.split("-")[0] for text in batch} for batch in backend.batches]
        assert all(len(owner) == 1 for owner in owners), "locked never batches requests together"
    else:
        assert backend.most_running <= (2 if strategy == "replicas" else 1)


async def test_replicas_run_batches_at_the_same_time() -> None:
    backend = FakeBackend(hold_batches=True)
    backend.release()  # the warm-up
    async with Engine(lambda: backend, sharing=plan_for("replicas"), offload=inline) as engine:
        backend.wait_entered()
        first = asyncio.create_task(engine.embed(["first"]))
        second = asyncio.create_task(engine.embed(["second"]))
        # Both batches are inside the model before either is let go.
        entered = {tuple(await asyncio.to_thread(backend.wait_entered)) for _ in range(2)}
        assert entered == {("first",), ("second",)}
        assert engine.statistics().worker.busy == 2
        backend.release(2)
        await asyncio.gather(first, second)
        spans = [s for s in engine.statistics().worker.recent_batches if s.inputs == 1][-2:]
    a, b = spans
    assert a.thread != b.thread
    assert a.started < b.finished, "the two batches overlapped"
    assert b.started < a.finished, "the two batches overlapped"


@pytest.mark.parametrize("strategy", ["dedicated", "locked"])
async def test_one_model_strategies_never_overlap(strategy: str) -> None:
    backend = FakeBackend()
    async with Engine(
        lambda: backend, settings=Settings(max_batch_size=4), sharing=plan_for(strategy)
    ) as engine:
        await asyncio.gather(*(engine.embed([f"text {i}"] * (1 + i % 3)) for i in range(40)))
        spans = sorted(engine.statistics().worker.recent_batches, key=lambda s: s.started)
    assert backend.most_running == 1
    for earlier, later in itertools.pairwise(spans):
        assert later.started >= earlier.finished


async def test_replica_that_fails_to_load_fails_start() -> None:
    loads = 0

    def second_load_fails() -> FakeBackend:
        nonlocal loads
        loads += 1
        if loads == 2:
            raise OSError("out of memory for the second copy")
        return FakeBackend()

    engine = Engine(second_load_fails, sharing=plan_for("replicas"))
    with pytest.raises(Exception, match="second copy"):
        await engine.start()
    await engine.close(grace=1)
