"""The thread budget and how one model is shared within it: which strategy, how many
replicas, how many intra-op threads each (pure: settings and core counts in, a plan out).

What the strategies are and why auto picks as it does: ``embedloom.sharing``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from embedloom.config import Settings, SettingsError

__all__ = ["SharingPlan", "Strategy", "plan_sharing", "worker_budget"]

Strategy = Literal["dedicated", "replicas", "locked"]

# Threads that carry requests to the lock in the ``locked`` strategy, like a
# small web server's thread pool. They wait on the lock, so they are not
# compute threads; only the one holding the lock computes.
_LOCKED_REQUEST_THREADS = 4
# Replicas cost a model copy each; past this many the memory grows while the
# gain is unmeasured (this machine has 2 cores), so larger budgets give each
# replica more intra-op threads instead.
_MAX_AUTO_REPLICAS = 4


@dataclass(frozen=True, slots=True)
class SharingPlan:
    """How the model is shared and how the thread budget is split."""

    strategy: Strategy
    replicas: int  # model instances
    inference_threads: int  # threads that call the model
    threads_per_replica: int  # intra-op threads each replica is given
    budget: int
    reason: str

    @property
    def compute_threads(self) -> int:
        """Busy compute threads at most: replicas running at once × their pools."""
        running_at_once = 1 if self.strategy == "locked" else self.replicas
        return running_at_once * self.threads_per_replica


def plan_sharing(settings: Settings, *, cores: int, gpus: int) -> SharingPlan:
    """Resolve ``--sharing``, ``--replicas`` and ``--threads`` against this machine."""
    budget = settings.threads or cores
    strategy: Strategy
    if settings.sharing != "auto":
        strategy = settings.sharing
        reason = f"--sharing {strategy}"
    elif gpus:
        strategy = "dedicated"
        reason = "a GPU: one inference thread keeps it fed; more would only contend for it"
    elif budget == 1:
        strategy = "dedicated"
        reason = "one core: nothing to split between replicas"
    else:
        # benchmarks/results/sharing.md (2 cores): two replicas of one thread beat one
        # model with both threads in 7 of 9 cells, by 1.2-1.5x with 8 or 32 callers
        # and with 64-sentence requests (split into batches that run side by side),
        # because a small model's per-operator cost (Python dispatch, OpenMP
        # fork/join) is paid in parallel instead of in series. dedicated wins only
        # with one caller sending 1 or 8 sentences, where a replica sits idle; a
        # server exists for concurrent callers, so auto takes replicas.
        strategy = "replicas"
        reason = (
            "CPU: replicas of budget ÷ K threads measured fastest with concurrent "
            "callers (benchmarks/results/sharing.md)"
        )
    if settings.replicas and strategy != "replicas":
        raise SettingsError(f"--replicas applies to --sharing replicas, not {strategy}")
    if strategy == "dedicated":
        return SharingPlan(strategy, 1, 1, budget, budget, reason)
    if strategy == "locked":
        return SharingPlan(strategy, 1, _LOCKED_REQUEST_THREADS, budget, budget, reason)
    replicas = settings.replicas or min(budget, _MAX_AUTO_REPLICAS)
    if replicas > budget:
        raise SettingsError(
            f"{replicas} replicas need at least {replicas} compute threads, more than the "
            f"thread budget of {budget}; lower --replicas or raise --threads"
        )
    return SharingPlan(strategy, replicas, replicas, budget // replicas, budget, reason)


def worker_budget(settings: Settings, *, cores: int) -> int:
    """Each worker process's share of the thread budget (``--workers``).

    Whole threads only: workers that would each get less than one are refused
    rather than left to oversubscribe the cores.
    """
    budget = settings.threads or cores
    if settings.workers > budget:
        raise SettingsError(
            f"{settings.workers} worker processes on a thread budget of {budget} would run "
            f"more compute threads than cores; use --workers {budget} or fewer"
        )
    return budget // settings.workers
