"""The batching decision, driven as a pure function: no threads, no clock, no model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedloom.batching import BatchPolicy, plan_batch


@dataclass(frozen=True)
class Item:
    n_tokens: int
    owner: object = None
    enqueued_at: float = 0.0
    deadline: float | None = None
    priority_class: int = 1  # normal
    task: str = "embed"

    @property
    def waiting_since(self) -> float:
        return self.enqueued_at


def queue_of(*lengths: int) -> list[Item]:
    return [Item(n) for n in lengths]


POLICY = BatchPolicy(max_batch_tokens=1024, max_batch_size=8, overhead_tokens=64)


def test_empty_queue_gives_no_batch() -> None:
    assert plan_batch([], POLICY) is None


def test_single_input_goes_at_once_when_the_model_is_idle() -> None:
    plan = plan_batch(queue_of(12), POLICY)
    assert plan is not None
    assert plan.positions == (0,)


def test_batch_size_is_capped() -> None:
    plan = plan_batch(queue_of(*[10] * 20), POLICY)
    assert plan is not None
    assert plan.size == 8
    assert plan.positions == tuple(range(8)), "equal lengths are taken oldest first"


def test_token_budget_counts_padding() -> None:
    policy = BatchPolicy(max_batch_tokens=300, max_batch_size=64, overhead_tokens=1000)
    plan = plan_batch(queue_of(*[100] * 5), policy)
    assert plan is not None
    assert plan.size == 3
    assert plan.padded_tokens <= 300


def test_input_longer_than_the_budget_runs_alone_rather_than_never() -> None:
    policy = BatchPolicy(max_batch_tokens=128, max_batch_size=8, overhead_tokens=64)
    plan = plan_batch(queue_of(256, 10, 10), policy)
    assert plan is not None
    assert plan.positions == (0,)


def test_similar_lengths_are_grouped_to_cut_padding() -> None:
    # Oldest is short; two long inputs sit between the short ones.
    queue = queue_of(10, 200, 11, 200, 12, 9)
    plan = plan_batch(queue, POLICY)
    assert plan is not None
    assert plan.positions == (0, 2, 4, 5)
    assert plan.padded_length == 12


def test_grouping_never_leaves_out_the_oldest_input() -> None:
    queue = queue_of(200, 10, 11, 12, 9, 10)
    plan = plan_batch(queue, POLICY)
    assert plan is not None
    assert 0 in plan.positions


def test_overhead_keeps_calls_from_being_split_too_fine() -> None:
    # Lengths 10 and 14: splitting saves 4 padded tokens per short input but
    # costs a whole extra model call.
    queue = queue_of(10, 14, 10, 14)
    plan = plan_batch(queue, POLICY)
    assert plan is not None
    assert plan.size == 4


def test_no_overhead_splits_by_length() -> None:
    policy = BatchPolicy(max_batch_tokens=1024, max_batch_size=8, overhead_tokens=0)
    plan = plan_batch(queue_of(10, 14, 10, 14), policy)
    assert plan is not None
    assert plan.positions == (0, 2)


def test_busy_model_gets_only_a_full_batch_ahead() -> None:
    assert plan_batch(queue_of(10, 10, 10), POLICY, model_idle=False) is None
    plan = plan_batch(queue_of(*[10] * 8), POLICY, model_idle=False)
    assert plan is not None
    assert plan.size == 8


def test_busy_model_prefetches_a_batch_full_by_tokens() -> None:
    policy = BatchPolicy(max_batch_tokens=250, max_batch_size=64, overhead_tokens=64)
    plan = plan_batch(queue_of(100, 100), policy, model_idle=False)
    assert plan is not None
    assert plan.size == 2


def test_planning_looks_at_a_bounded_window() -> None:
    policy = BatchPolicy(max_batch_tokens=4096, max_batch_size=4, overhead_tokens=64, window=4)
    # The matching short inputs lie beyond the window; only the window is grouped.
    queue = queue_of(5, 100, 100, 100, 5, 5, 5)
    plan = plan_batch(queue, policy)
    assert plan is not None
    assert max(plan.positions) < 4


@pytest.mark.parametrize(
    "limits",
    [
        {"max_batch_tokens": 0, "max_batch_size": 1},
        {"max_batch_tokens": 1, "max_batch_size": 0},
        {"max_batch_tokens": 1, "max_batch_size": 1, "overhead_tokens": -1},
        {"max_batch_tokens": 1, "max_batch_size": 1, "window": 0},
    ],
    ids=["tokens", "size", "overhead", "window"],
)
def test_policy_rejects_impossible_limits(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must"):
        BatchPolicy(**limits)


lengths = st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=120)
policies = st.builds(
    BatchPolicy,
    max_batch_tokens=st.integers(min_value=300, max_value=8192),
    max_batch_size=st.integers(min_value=1, max_value=64),
    overhead_tokens=st.integers(min_value=0, max_value=500),
    window=st.integers(min_value=1, max_value=128),
)


@settings(max_examples=300, deadline=None)
@given(lengths, policies)
def test_every_plan_respects_the_limits(queue_lengths: list[int], policy: BatchPolicy) -> None:
    queue = queue_of(*queue_lengths)
    plan = plan_batch(queue, policy)
    assert plan is not None
    assert plan.positions[0] == 0, "the oldest input is always in the batch"
    assert list(plan.positions) == sorted(set(plan.positions))
    assert plan.size <= policy.max_batch_size
    assert max(plan.positions) < min(len(queue), policy.window)
    assert plan.padded_length == max(queue[p].n_tokens for p in plan.positions)
    assert plan.real_tokens == sum(queue[p].n_tokens for p in plan.positions)
    if plan.size > 1:
        assert plan.padded_tokens <= policy.max_batch_tokens


@settings(max_examples=100, deadline=None)
@given(lengths, policies, st.integers(min_value=0, max_value=5))
def test_no_input_starves_under_constant_arrivals(
    queue_lengths: list[int], policy: BatchPolicy, arrivals_per_batch: int
) -> None:
    """Each input is served within as many batches as there were inputs ahead of it."""
    queue = [(i, Item(n)) for i, n in enumerate(queue_lengths)]
    watched = len(queue) - 1  # the newest input at the start
    next_id = len(queue)
    for batches in range(1, len(queue_lengths) + 1):
        plan = plan_batch([item for _, item in queue], policy)
        assert plan is not None
        taken = {queue[p][0] for p in plan.positions}
        if watched in taken:
            assert batches <= watched + 1
            return
        queue = [entry for entry in queue if entry[0] not in taken]
        for _ in range(arrivals_per_batch):
            queue.append((next_id, Item(1 + next_id % 97)))
            next_id += 1
    raise AssertionError("the watched input was never served")


# -- deadlines and priority (a fake clock: ``now`` is passed in) --------------------


def test_expired_inputs_are_reported_and_never_planned() -> None:
    queue = [Item(10, deadline=5.0), Item(10), Item(10, deadline=50.0)]
    plan = plan_batch(queue, POLICY, now=10.0)
    assert plan is not None
    assert plan.expired == (0,)
    assert 0 not in plan.positions
    assert plan.positions == (1, 2)


def test_a_queue_of_only_expired_inputs_gives_an_empty_plan_to_clear_them() -> None:
    plan = plan_batch([Item(10, deadline=1.0)], POLICY, model_idle=False, now=2.0)
    assert plan is not None
    assert plan.positions == ()
    assert plan.expired == (0,)


def test_the_most_urgent_class_anchors_the_batch() -> None:
    policy = BatchPolicy(max_batch_tokens=1024, max_batch_size=1, overhead_tokens=64)
    queue = [Item(10, priority_class=2), Item(10, priority_class=1), Item(10, priority_class=0)]
    plan = plan_batch(queue, policy, now=0.0)
    assert plan is not None
    assert plan.positions == (2,)


def test_ageing_lifts_a_waiting_low_input_above_fresh_high_ones() -> None:
    policy = BatchPolicy(max_batch_tokens=1024, max_batch_size=1, ageing_seconds=2.0)
    queue = [
        Item(10, priority_class=2, enqueued_at=0.0),
        Item(10, priority_class=0, enqueued_at=3.9),
    ]
    # Not yet two ageing periods: high first. From 4 s on, low ranks with high and
    # is older.
    assert plan_batch(queue, policy, now=3.95).positions == (1,)  # type: ignore[union-attr]
    assert plan_batch(queue, policy, now=4.0).positions == (0,)  # type: ignore[union-attr]


@given(
    classes=st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=80),
    lengths=st.lists(st.integers(min_value=1, max_value=300), min_size=80, max_size=80),
    now=st.floats(min_value=80, max_value=200),
)
@settings(max_examples=200, deadline=None)
def test_the_most_urgent_input_is_always_in_the_batch(
    classes: list[int], lengths: list[int], now: float
) -> None:
    queue = [
        Item(lengths[i], priority_class=c, enqueued_at=float(i)) for i, c in enumerate(classes)
    ]
    waited_periods = [(now - item.enqueued_at) // 2.0 for item in queue]
    most_urgent = min(
        range(len(queue)), key=lambda i: (queue[i].priority_class - waited_periods[i], i)
    )
    plan = plan_batch(queue, POLICY, now=now)
    assert plan is not None
    assert most_urgent in plan.positions


def test_a_batch_holds_the_most_urgent_inputs_task_only() -> None:
    queue = [Item(5, task="tokens"), Item(5), Item(5, task="tokens"), Item(5)]
    plan = plan_batch(queue, POLICY)
    assert plan is not None
    assert plan.positions == (0, 2)
    rest = [queue[1], queue[3]]
    later = plan_batch(rest, POLICY)
    assert later is not None
    assert later.positions == (0, 1)
