"""Latency under load, deterministically: the fair order (tenants, then requests),
the drain model behind admission's predicted wait, and the engine refusing by
predicted wait — a fake backend whose batches cost known fake seconds per call and
per token, on a fake clock. No timing: counts and orders."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from embedloom import Overloaded
from embedloom.engine import Engine
from embedloom.engine.drain import DrainModel
from embedloom.engine.fairness import FairQueue
from embedloom.scope import request_scope, tenant_scope
from embedloom.sharing.slots import ComputeSlots
from tests.fakes import FakeBackend, running_engine
from tests.test_engine import FakeClock, running, until_queued


@dataclass(eq=False)
class Item:
    n_tokens: int
    owner: object
    priority_class: int = 1
    name: str = field(default="")


def request(name: str, inputs: int, tokens: int = 10) -> list[Item]:
    owner = object()
    return [Item(tokens, owner, name=f"{name}{i}") for i in range(inputs)]


def test_tenants_share_by_weight_and_requests_within_a_tenant_share_equally() -> None:
    queue: FairQueue[Item] = FairQueue(overhead_tokens=0, max_batch_size=8)
    for _ in range(100):
        queue.push(request("a", 1), tenant="a", weight=3.0)
        queue.push(request("b", 1), tenant="b", weight=1.0)
    order = queue.service_order(40)
    assert sum(item.name.startswith("a") for item in order) == 30
    assert sum(item.name.startswith("b") for item in order) == 10
    # The shares hold as work is taken, not only in one plan.
    taken = {"a": 0, "b": 0}
    for _ in range(10):
        batch = queue.service_order(8)
        queue.take(batch)
        for item in batch:
            taken[item.name[0]] += 1
    assert taken == {"a": 60, "b": 20}


def test_one_input_requests_behind_a_64_input_one_go_first_and_it_then_runs() -> None:
    queue: FairQueue[Item] = FairQueue(overhead_tokens=0, max_batch_size=8)
    queue.push(request("big", 64))
    for n in range(30):
        queue.push(request(f"small{n}-", 1))
    first = queue.service_order(40)
    assert [item.name for item in first[:30]] == [f"small{n}-0" for n in range(30)]
    assert [item.name for item in first[30:]] == [f"big{i}" for i in range(10)]
    # Started, it is overtaken only by newcomers that arrive before the virtual time
    # reaches its tag. Under a stream of 8 new one-input requests per batch of 8,
    # about 30 requests are always waiting: its fair share is one request's in 31,
    # so it is done within about 64 × 31 / 8 = 248 batches, not never.
    queue.take(queue.service_order(8))
    rounds = 0
    while any(item.name.startswith("big") for item in queue):
        rounds += 1
        for n in range(8):
            queue.push(request(f"new{rounds}.{n}-", 1))
        queue.take(queue.service_order(8))
    assert 64 <= rounds <= 248


def test_requests_of_one_size_run_in_arrival_order_within_a_tenant() -> None:
    queue: FairQueue[Item] = FairQueue(overhead_tokens=0, max_batch_size=8)
    for n in range(4):
        queue.push(request(f"r{n}-", 8))
    names = [item.name for item in queue.service_order(32)]
    assert names == [f"r{n}-{i}" for n in range(4) for i in range(8)]


def test_fifo_keeps_arrival_order() -> None:
    queue: FairQueue[Item] = FairQueue(overhead_tokens=0, max_batch_size=8, fifo=True)
    queue.push(request("big", 64))
    queue.push(request("small", 1))
    assert [item.name for item in queue.service_order(65)][-1] == "small0"


def test_work_ahead_of_a_quiet_tenant_is_small_while_a_flooding_one_waits_behind_itself() -> None:
    queue: FairQueue[Item] = FairQueue(overhead_tokens=0, max_batch_size=8)
    for _ in range(100):
        queue.push(request("f", 1), tenant="flood")
    assert queue.cost_ahead("flood", 1.0, 1, cost=10) == 1000  # all of its own
    assert queue.cost_ahead("quiet", 1.0, 1, cost=10) == 10  # one input of the flood's
    # A more urgent class is always ahead; a less urgent one never.
    high = request("h", 5)
    for item in high:
        item.priority_class = 0
    queue.push(high, tenant="other")
    assert queue.cost_ahead("quiet", 1.0, 1, cost=10) == 60
    assert queue.cost_ahead("quiet", 1.0, 0, cost=10) == 10  # its fair turn among high
    assert queue.cost_ahead("quiet", 1.0, 2, cost=10) == 1050


def test_a_removed_request_leaves_nothing_behind() -> None:
    queue: FairQueue[Item] = FairQueue(overhead_tokens=16, max_batch_size=8)
    items = request("x", 3)
    queue.push(items, tenant="t")
    queue.take(items[:1])
    assert queue.remove(items[0].owner) == items[1:]
    assert (len(queue), queue.queued_cost, queue.service_order(8)) == (0, 0.0, [])


def test_the_drain_model_fits_call_and_token_costs_and_follows_a_slowdown() -> None:
    model = DrainModel(overhead_tokens=64)
    for padded in (24, 192) * 10:
        model.record(padded, padded, 0.05 + 0.001 * padded)
    per_call, per_token = model.costs()
    assert (per_call, per_token) == (pytest.approx(0.05), pytest.approx(0.001))
    before = model.seconds(1000, 2)
    for padded in (24, 192) * 100:  # the machine is twice as slow now
        model.record(padded, padded, 2 * (0.05 + 0.001 * padded))
    assert model.seconds(1000, 2) == pytest.approx(2 * before, rel=0.05)


def test_batches_all_of_one_size_split_their_cost_as_the_batcher_assumes() -> None:
    model = DrainModel(overhead_tokens=64)
    model.record(64, 64, 0.128)  # 64 tokens + 64 of call overhead in 0.128 s
    assert model.costs() == (pytest.approx(0.064), pytest.approx(0.001))


class CostlyBackend(FakeBackend):
    """Each batch costs ``per_call`` + ``per_token`` × its padded tokens of fake time."""

    def __init__(self, clock: FakeClock, per_call: float, per_token: float) -> None:
        super().__init__(hold_batches=True)
        self.clock = clock
        self.per_call = per_call
        self.per_token = per_token

    def embed(self, batch: Any) -> Any:
        padded = max(len(item.input_ids) for item in batch) * len(batch)
        self.clock.now += self.per_call + self.per_token * padded
        return super().embed(batch)


# 24 fake tokens: with a call's 64 tokens shared by a full batch of 32, each input
# costs 26 units, what the engine assumes before it has measured any.
TEXT = "q" * 24


async def fit(engine: Engine, backend: CostlyBackend, batches: int) -> None:
    """Run ``batches`` batches of 1 and 8 inputs in turn, for the drain model to fit."""
    backend.release(batches)
    for n in range(batches):
        await engine.embed([TEXT] * (1 if n % 2 else 8))


@asynccontextmanager
async def held_engine(
    slots: ComputeSlots | None = None,
) -> AsyncIterator[tuple[Engine, CostlyBackend, asyncio.Task[Any]]]:
    """An engine whose batches cost 0.05 s + 0.001 s per token, its drain model fitted
    over 20 batches, with one request of ``TEXT`` running (held) in the model."""
    clock = FakeClock()
    backend = CostlyBackend(clock, per_call=0.05, per_token=0.001)
    async with running_engine(backend, clock=clock, slots=slots, max_queue_wait=0.5) as engine:
        await fit(engine, backend, 20)
        busy = asyncio.create_task(engine.embed([TEXT]))
        await asyncio.to_thread(backend.wait_entered)
        yield engine, backend, busy


async def fill_until_refused(engine: Engine, tenant: str = "default") -> tuple[list[Any], Any]:
    """Queue one-input requests for ``tenant`` until one is refused."""
    admitted: list[asyncio.Task[Any]] = []
    with request_scope(), tenant_scope(tenant):
        for _ in range(200):
            task = asyncio.create_task(engine.embed([TEXT]))
            await asyncio.sleep(0)  # admitted and queued (tokenised inline), or refused
            if task.done():
                return admitted, task.exception()
            admitted.append(task)
    raise AssertionError("never refused")


async def test_admission_refuses_exactly_past_the_target_wait_and_admits_more_when_faster() -> None:
    async with held_engine() as (engine, backend, busy):
        admitted, refused = await fill_until_refused(engine)
        # Ahead of the n-th newcomer: n - 1 queued inputs of 26 units, half of the
        # running one: 0.05 s + (26 (n - 1) + 13) × 0.001 s. The 17th waits 0.479 s,
        # the 18th would wait 0.505 s: refused, with a Retry-After of at least 1 s.
        assert len(admitted) == 17
        assert isinstance(refused, Overloaded)
        assert refused.retry_after == 1.0
        assert "0.505s of queued work" in str(refused)
        backend.release(2)  # the running batch, then the 17 queued in one
        await asyncio.gather(busy, *admitted)

        # The machine gets four times faster: the same wait admits more.
        backend.per_call, backend.per_token = 0.0125, 0.00025
        await fit(engine, backend, 100)
        busy = asyncio.create_task(engine.embed([TEXT]))
        await asyncio.to_thread(backend.wait_entered)
        faster, refused = await fill_until_refused(engine)
        assert len(faster) >= 2 * 17
        assert isinstance(refused, Overloaded)
        backend.release(100)
        await asyncio.gather(busy, *faster)
        stats = engine.statistics()
    assert stats.requests_rejected == 2
    assert stats.tenants["default"].requests_rejected == 2


async def test_a_tenant_over_its_share_is_refused_while_another_is_admitted() -> None:
    async with held_engine() as (engine, backend, busy):
        flood, refused = await fill_until_refused(engine, "flood")
        assert isinstance(refused, Overloaded)
        # The quiet tenant's request waits for its fair turn only: one input of the
        # flood's, not all of them.
        with request_scope(), tenant_scope("quiet"):
            quiet = asyncio.create_task(engine.embed([TEXT] * 4))
            await until_queued(engine, len(flood) + 4)
        with request_scope(), tenant_scope("flood"), pytest.raises(Overloaded):
            await engine.embed([TEXT])
        backend.release(100)
        await asyncio.gather(busy, quiet, *flood)
        tenants = engine.statistics().tenants
    assert (tenants["flood"].requests_rejected, tenants["quiet"].requests_rejected) == (2, 0)
    assert (tenants["flood"].inputs_embedded, tenants["quiet"].inputs_embedded) == (len(flood), 4)


async def test_another_models_backlog_on_the_same_compute_slots_counts_as_waiting() -> None:
    slots = ComputeSlots(1)
    async with held_engine(slots) as (engine, backend, busy):
        # Eight queued ahead of the next: 0.05 s + (8 × 26 + 13) × 0.001 s = 0.271 s.
        ahead = [asyncio.create_task(engine.embed([TEXT])) for _ in range(8)]
        await until_queued(engine, 8)
        # Another model on the same slots has 10 s queued: its batches interleave with
        # these, adding as much again as it takes until this one is done (0.347 s).
        slots.publish_backlog("other", lambda: 10.0)
        refused = asyncio.create_task(engine.embed([TEXT]))
        await asyncio.sleep(0)
        assert isinstance(refused.exception(), Overloaded)
        slots.publish_backlog("other", None)
        alone = asyncio.create_task(engine.embed([TEXT]))
        await until_queued(engine, 9)
        backend.release(100)
        await asyncio.gather(busy, alone, *ahead)


@pytest.mark.parametrize("scheduling", ["fair", "fifo"])
async def test_one_input_requests_behind_a_64_input_one(scheduling: str) -> None:
    backend = FakeBackend(hold_batches=True)
    async with running(backend, max_batch_size=8, scheduling=scheduling) as engine:
        busy = asyncio.create_task(engine.embed(["busy"]))
        await asyncio.to_thread(backend.wait_entered)
        big = asyncio.create_task(engine.embed([f"b{i:03d}" for i in range(64)]))
        await asyncio.sleep(0)
        small = [asyncio.create_task(engine.embed([f"s{i:03d}"])) for i in range(30)]
        await asyncio.sleep(0)
        backend.release(100)
        await asyncio.gather(busy, big, *small)
    batches = backend.batches[1:]
    last_small = max(i for i, batch in enumerate(batches) if any(t[0] == "s" for t in batch))
    if scheduling == "fair":
        # One full batch of the long request was prepared while the model was busy;
        # then each short one has its turn beside the long one's next: 31 in 4 batches.
        assert last_small <= 4
    else:
        assert last_small >= 8  # behind all 64 of the long one
