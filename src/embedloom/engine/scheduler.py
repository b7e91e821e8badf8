"""The scheduler: the queue of inputs in front of the model, the batches in flight,
and what comes back.

All on the event loop's thread (so the queue needs no lock): inputs are queued
(``fairness``: in the order they will be served, fair between tenants and
requests) → ``plan_batch`` (pure) cuts the next batch → the worker's thread runs it →
rows are written back into each request at their own index, so outputs keep
the request's order and never mix with another's. A request whose caller goes
away is removed from the queue at once; if a batch holding it is already
waiting, the worker skips it.

Faults stay as small as they can. A batch the backend fails on is split in
two and each half retried ahead of the queue, down to the single input that
fails (a poisoned input fails only its own request). A watchdog finds
inference threads that died or hang: what they held fails, what was queued
fails at once (rather than wait on a model that may never answer), and the
scheduler reports itself recovering until the thread and its model are
replaced.

The scheduler also predicts how long a newcomer would wait (``predicted_wait``),
for admission: the work the fair order would run before it finishes, other than
its own, divided by the drain rate measured over recent batches in the same
cost units (so it follows the machine as it speeds up or slows down).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from embedloom import tracing
from embedloom.backends.base import Backend, Row, TokenizedInput
from embedloom.batching import BatchPolicy, plan_batch
from embedloom.engine.admission import Admission
from embedloom.engine.api import Embeddings
from embedloom.engine.drain import DrainModel
from embedloom.engine.fairness import FairQueue
from embedloom.engine.statistics import TenantStatistics
from embedloom.engine.work import RAGGED_TASKS, Job, QueuedInput, Request, finished_vectors
from embedloom.errors import BackendError, DeadlineExceeded, EmbedloomError, Unavailable
from embedloom.sharing import InferenceWorker, ThreadFault
from embedloom.sharing.worker import Outputs
from embedloom.stats import Histogram

__all__ = ["Scheduler"]

# The engine's log, whichever of its modules writes.
logger = logging.getLogger("embedloom.engine")

_BATCH_SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BOUNDS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_INPUT_TOKEN_BOUNDS = (8, 16, 32, 64, 128, 256, 512, 1024)
_SECONDS_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# How often the watchdog looks at the inference threads, at most; a shorter hang
# limit is checked four times per limit.
_WATCHDOG_INTERVAL = 1.0
# Tokens an input is assumed to hold before any is measured (a short sentence).
_FIRST_GUESS_TOKENS = 24
# How fast the mean input cost follows what arrives (per request).
_COST_SMOOTHING = 0.05
# Tenants counted apart in the statistics; past this many, the rest are "other"
# (tenant names from a header are the caller's to choose).
MAX_COUNTED_TENANTS = 64


class Scheduler:
    """The queue, the jobs in flight, their outcomes, expiry and the watchdog, for one
    engine's worker. ``start`` it on the loop before queueing anything."""

    def __init__(
        self,
        worker: InferenceWorker,
        policy: BatchPolicy,
        admission: Admission,
        *,
        inference_timeout: float,
        fifo: bool = False,
        others_backlog: Callable[[], list[float]] | None = None,
    ) -> None:
        """``others_backlog``: seconds of work queued at each other engine sharing this
        one's compute slots (their work competes for the same cores)."""
        self._worker = worker
        self._policy = policy
        self._admission = admission
        self._inference_timeout = inference_timeout
        self._others_backlog = others_backlog
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._queue: FairQueue[QueuedInput] = FairQueue(
            policy.overhead_tokens, policy.max_batch_size, fifo=fifo
        )
        # What a batch costs in seconds, a new input's expected cost, and the
        # work admitted but not yet queued.
        self._drain = DrainModel(policy.overhead_tokens)
        self._input_cost = self._queue.cost_of_tokens(_FIRST_GUESS_TOKENS)
        self._unqueued: dict[int, float] = {}  # request → its predicted cost
        # Per tenant: requests admitted and refused, inputs embedded.
        self._tenants: dict[str, list[int]] = {}
        # Halves of failed batches, run before anything new is planned.
        self._retries: deque[list[QueuedInput]] = deque()
        # Batches handed to the worker and not yet finished (nor given up on).
        self._jobs: dict[int, Job] = {}
        self._next_batch_id = 0
        # Inference threads being replaced → why; the engine is unhealthy meanwhile.
        self._recovering: dict[int, str] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self.serving = asyncio.Event()  # every inference thread in place
        self._counts = dict.fromkeys(
            (
                "requests_admitted",
                "requests_completed",
                "requests_failed",
                "requests_cancelled",
                "requests_expired",
                "batches_split",
                "inference_restarts",
                "inputs_embedded",
                "inputs_dropped",
                "batches_run",
                "batches_shared",
                "input_tokens",
                "padded_tokens",
            ),
            0,
        )
        self._batch_size = Histogram(_BATCH_SIZE_BOUNDS)
        self._batch_tokens = Histogram(_TOKEN_BOUNDS)
        self._input_length = Histogram(_INPUT_TOKEN_BOUNDS)
        self._queue_seconds = Histogram(_SECONDS_BOUNDS)
        self._inference_seconds = Histogram(_SECONDS_BOUNDS)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def start_watchdog(self) -> None:
        self.serving.set()
        self._schedule_watchdog()

    def stop(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _now(self) -> float:
        """The loop's time: the one clock of deadlines, queue waits and ageing."""
        assert self._loop is not None
        return self._loop.time()

    @property
    def recovering_reason(self) -> str | None:
        """Why inference threads are being replaced (None while none is)."""
        return "; ".join(self._recovering.values()) if self._recovering else None

    def track(self, request: Request, size: int) -> None:
        """A request of ``size`` inputs was admitted: count it, hold its predicted cost
        until it is queued, and fail it when its deadline passes while queued (the
        batcher also skips expired inputs itself)."""
        assert self._loop is not None
        self._counts["requests_admitted"] += 1
        self._tenant_counts(request.tenant)[0] += 1
        self._unqueued[id(request)] = size * self._input_cost
        if request.deadline is not None:
            request.timer = self._loop.call_at(request.deadline, self._expire, request)

    def count_refused(self, tenant: str) -> None:
        self._tenant_counts(tenant)[1] += 1

    def _tenant_counts(self, tenant: str) -> list[int]:
        counts = self._tenants.get(tenant)
        if counts is None:
            if len(self._tenants) >= MAX_COUNTED_TENANTS:
                tenant = "other"
            counts = self._tenants.setdefault(tenant, [0, 0, 0])
        return counts

    def _settle_unqueued(self, request: Request) -> None:
        self._unqueued.pop(id(request), None)

    def predicted_wait(
        self, size: int, tenant: str, weight: float, priority_class: int
    ) -> float | None:
        """Seconds a new request of ``size`` inputs would wait (its own work aside), or
        None before any batch has been measured."""
        if not self._drain.measured:
            return None
        own = size * self._input_cost
        ahead = self._queue.cost_ahead(tenant, weight, priority_class, own)
        running = sum(self._queue.cost(item) for job in self._jobs.values() for item in job.items)
        # Requests being tokenised will be queued beside it, interleaved as fairly.
        ahead += sum(min(cost, own) for cost in self._unqueued.values())
        # A running batch is half done on average.
        seconds = self._seconds_for(ahead + running / 2)
        if self._others_backlog is not None:
            # Other models' batches take the same cores, interleaved with this one's
            # (slots are granted in turn): each delays it by as much of its backlog
            # as runs before this request would be done.
            done_by = seconds + self._seconds_for(own)
            seconds += sum(min(other, done_by) for other in self._others_backlog())
        return seconds

    def _seconds_for(self, cost: float) -> float:
        """Seconds the inference threads take over queued work of ``cost``, run in
        batches as full as the limits allow (as they are under load)."""
        if cost <= 0:
            return 0.0
        full_batch = min(
            self._policy.max_batch_size * self._input_cost, self._policy.max_batch_tokens
        )
        calls = max(1.0, cost / full_batch)
        return self._drain.seconds(cost, calls) / self._worker.parallelism

    def backlog_seconds(self) -> float:
        """Seconds of work queued here (0 before a batch is measured): what it adds to
        another model's wait."""
        if not self._drain.measured:
            return 0.0
        return self._seconds_for(self._queue.queued_cost + sum(self._unqueued.values()))

    def count_dropped(self, inputs: int) -> None:
        """Inputs that never reached the engine (a stream left early)."""
        self._counts["inputs_dropped"] += inputs

    def snapshot(self) -> dict[str, Any]:
        """The fields of ``EngineStatistics`` this scheduler keeps."""
        return {
            "queued_inputs": len(self._queue),
            "running_batches": len(self._jobs),
            "batch_size": self._batch_size.snapshot(),
            "batch_tokens": self._batch_tokens.snapshot(),
            "input_length": self._input_length.snapshot(),
            "queue_seconds": self._queue_seconds.snapshot(),
            "inference_seconds": self._inference_seconds.snapshot(),
            "tenants": {name: TenantStatistics(*counts) for name, counts in self._tenants.items()},
            **self._counts,
        }

    def enqueue(self, request: Request, tokenized: list[TokenizedInput]) -> None:
        now = self._now()
        items = [QueuedInput(request, index, tokens, now) for index, tokens in enumerate(tokenized)]
        for tokens in tokenized:
            self._input_length.observe(tokens.n_tokens)
            request.tokens += tokens.n_tokens
        self._queue.push(items, request.tenant, request.tenant_weight)
        self._settle_unqueued(request)
        if items and self.serving.is_set():  # the warm-up is not traffic
            mean = self._queue.cost_of_tokens(request.tokens / len(items))
            self._input_cost += _COST_SMOOTHING * (mean - self._input_cost)
        self._counts["input_tokens"] += request.tokens
        request.enqueued = True
        request.enqueued_at = request.waiting_since = now
        if request.span is not None:
            request.queued_ns = tracing.now_ns()
        self.dispatch()

    def dispatch(self) -> None:
        """Hand batches to the worker while it has room and the planner says go."""
        assert self._loop is not None
        while self._retries and len(self._jobs) < self._worker.capacity:
            self._submit(self._retries.popleft())
        while self._queue and len(self._jobs) < self._worker.capacity:
            idle = len(self._jobs) < self._worker.parallelism
            order = self._queue.service_order(self._policy.window)
            plan = plan_batch(order, self._policy, model_idle=idle, now=self._now())
            if plan is None:
                return
            if plan.expired:
                expired = (order[i].request for i in plan.expired)
                for request in {id(r): r for r in expired}.values():
                    self._expire(request)
                continue
            items = [order[i] for i in plan.positions]
            self._queue.take(items)
            now = self._now()
            for item in items:
                self._queue_seconds.observe(now - item.enqueued_at)
                item.request.waiting_since = now
                if not item.request.started_at:
                    item.request.started_at = now
            if tracing.enabled():
                self._trace_queue_wait(items)
            self._submit(items)

    def _submit(self, items: list[QueuedInput]) -> None:
        assert self._loop is not None
        self._next_batch_id += 1
        job = Job(self._next_batch_id, items, self._loop, self._on_job_done)
        self._jobs[job.batch_id] = job
        self._worker.submit(job)

    def _on_job_done(
        self,
        job: Job,
        vectors: Outputs | None,
        error: BaseException | None,
        seconds: float,
    ) -> None:
        if job.abandoned:
            return  # its thread was given up on and its requests already failed
        job.finished = True
        del self._jobs[job.batch_id]
        taken = job.taken
        self._counts["inputs_dropped"] += len(job.skipped)
        for item in job.skipped:
            item.request.permit.release()
            if not item.request.cancelled:  # skipped for its deadline
                self._expire(item.request)
        if taken:
            self._record_batch(taken, seconds)
        if error is not None and len(taken) > 1:
            # One bad input must not fail its neighbours: retry each half, ahead
            # of the queue, until the input that fails is alone.
            self._counts["batches_split"] += 1
            half = len(taken) // 2
            self._retries.extendleft((taken[half:], taken[:half]))
            logger.warning(
                "batch %d failed (%s); retrying its %d inputs in two halves",
                job.batch_id,
                type(error).__name__,
                len(taken),
            )
        elif error is not None:
            (item,) = taken
            # The message goes to the client: the exception's type, never its text
            # (which may hold paths); the log has the whole traceback.
            failure = BackendError(
                f"the model failed on input {item.index} of this request "
                f"({type(error).__name__}); other inputs batched with it were not affected"
            )
            failure.__cause__ = error
            item.request.permit.release()
            self._fail(item.request, failure)
        elif taken:
            assert vectors is not None
            for row, item in enumerate(taken):
                self._deliver(item, vectors[row])
        self.dispatch()

    def _trace_queue_wait(self, items: list[QueuedInput]) -> None:
        """The queue span of each request whose first input starts a batch now."""
        now = tracing.now_ns()
        for request in {id(item.request): item.request for item in items}.values():
            if request.span is not None and not request.first_batch_ns:
                request.first_batch_ns = now
                tracing.record_span("embedloom.queue", request.span, request.queued_ns, now)

    def _record_batch(self, taken: list[QueuedInput], seconds: float) -> None:
        padded = max(item.n_tokens for item in taken) * len(taken)
        self._counts["batches_run"] += 1
        first = taken[0].request
        if any(item.request is not first for item in taken):
            self._counts["batches_shared"] += 1
        self._counts["padded_tokens"] += padded
        self._batch_size.observe(len(taken))
        self._batch_tokens.observe(padded)
        self._inference_seconds.observe(seconds)
        self._admission.record_drain(len(taken), seconds)
        if self.serving.is_set():  # not the warm-up: a first call pays for allocations
            self._drain.record(padded, sum(item.n_tokens for item in taken), seconds)

    def _deliver(self, item: QueuedInput, vector: Row) -> None:
        request = item.request
        request.permit.release()
        if request.future.done():
            return
        if request.task in RAGGED_TASKS:
            request.rows[item.index] = vector
        else:
            assert isinstance(vector, np.ndarray)
            request.raw[item.index] = vector
        request.unfinished -= 1
        self._counts["inputs_embedded"] += 1
        self._tenant_counts(request.tenant)[2] += 1
        if request.unfinished == 0:
            if request.timer is not None:
                request.timer.cancel()
            if request.span is not None:
                tracing.record_span(
                    "embedloom.inference", request.span, request.first_batch_ns, tracing.now_ns()
                )
            now = self._now()
            started = request.started_at or now
            rows = [row for row in request.rows if row is not None]
            request.future.set_result(
                Embeddings(
                    finished_vectors(request.raw, request.dimensions, request.normalize),
                    request.tokens,
                    queue_seconds=max(0.0, started - request.enqueued_at),
                    inference_seconds=max(0.0, now - started),
                    token_vectors=rows if request.task == "tokens" else None,  # type: ignore[arg-type]
                    sparse=rows if request.task == "sparse" else None,  # type: ignore[arg-type]
                )
            )
            self._counts["requests_completed"] += 1

    def _expire(self, request: Request) -> None:
        if request.future.done():
            self._remove_queued(request)  # nothing of a finished request may stay queued
            return
        assert request.deadline is not None
        self._counts["requests_expired"] += 1
        self._fail(
            request,
            DeadlineExceeded(
                f"the request's deadline passed after "
                f"{request.deadline - request.admitted_at:.3f}s; "
                "its remaining inputs were dropped unrun"
            ),
        )

    def _fail(self, request: Request, error: BaseException) -> None:
        """Fail a request and drop its queued inputs (those in a batch finish on their own)."""
        if request.timer is not None:
            request.timer.cancel()
        request.cancelled = True
        self._remove_queued(request)
        if not request.future.done():
            request.future.set_exception(error)
            self._counts["requests_failed"] += 1

    def abandon(self, request: Request, reason: BaseException) -> None:
        """The caller left (cancelled or raised): free everything not already running."""
        if isinstance(reason, asyncio.CancelledError):
            self._counts["requests_cancelled"] += 1
        if request.timer is not None:
            request.timer.cancel()
        request.cancelled = True
        self._settle_unqueued(request)
        if not request.enqueued:
            request.permit.release_all()
            return
        dropped = self._remove_queued(request)
        self._counts["inputs_dropped"] += dropped

    def _remove_queued(self, request: Request) -> int:
        removed = len(self._queue.remove(request))
        if self._retries:
            kept = [[q for q in part if q.request is not request] for part in self._retries]
            removed += sum(map(len, self._retries)) - sum(map(len, kept))
            self._retries = deque(part for part in kept if part)
        request.permit.release(removed)
        return removed

    def fail_waiting(self, error: EmbedloomError) -> None:
        """Fail every request with inputs queued or waiting for a retry."""
        waiting = [q.request for q in self._queue]
        waiting += [q.request for part in self._retries for q in part]
        for request in {id(r): r for r in waiting}.values():
            self._fail(request, error)

    # -- the watchdog ----------------------------------------------------------------

    def _schedule_watchdog(self) -> None:
        assert self._loop is not None
        limit = self._inference_timeout
        interval = min(_WATCHDOG_INTERVAL, limit / 4) if limit else _WATCHDOG_INTERVAL
        self._watchdog = self._loop.call_later(interval, self._watch)

    def _watch(self) -> None:
        if self._closed:
            return
        faults = self._worker.find_faults(self._inference_timeout or None)
        if faults:
            self._on_faults(faults)
        self._schedule_watchdog()

    def _on_faults(self, faults: list[ThreadFault]) -> None:
        """Give up on dead or hung inference threads: fail what they held and what is
        queued, and replace them; the engine is unhealthy until they are back."""
        assert self._loop is not None
        for fault in faults:
            reason = fault.describe()
            logger.error("%s; replacing it and its model", reason)
            self._counts["inference_restarts"] += 1
            self._recovering[fault.thread] = f"{reason}; restarting it"
            self.serving.clear()
            job = self._jobs.pop(fault.job.batch_id, None) if isinstance(fault.job, Job) else None
            if job is not None and not job.finished:
                job.abandoned = True
                failure = BackendError(
                    f"the model stopped answering ({reason}) while running this request"
                )
                for item in job.items:
                    item.request.permit.release()
                    self._fail(item.request, failure)
            restarted = asyncio.wrap_future(self._worker.restart(fault.thread), loop=self._loop)
            restarted.add_done_callback(functools.partial(self._on_restarted, fault.thread))
        self.fail_waiting(
            Unavailable(f"the model is restarting ({self.recovering_reason}); retry shortly")
        )

    def _on_restarted(self, thread: int, restarted: asyncio.Future[Backend]) -> None:
        error = restarted.exception()
        if error is not None:
            # Still unhealthy; the watchdog finds the dead slot and tries again.
            logger.error("inference thread %d failed to restart: %s", thread, error)
            self._recovering[thread] = f"inference thread {thread} failed to restart"
            return
        self._recovering.pop(thread, None)
        logger.info("inference thread %d restarted with a fresh model", thread)
        if not self._recovering:
            self.serving.set()
            self.dispatch()
