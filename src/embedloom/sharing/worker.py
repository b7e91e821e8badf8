"""The inference threads: a worker takes ``BatchJob``s, runs them on threads that own
model instances, and reports each outcome through the job; it finds dead and hung
threads and replaces them. It knows nothing of asyncio or requests.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from embedloom import tracing
from embedloom.backends.base import Backend, BackendFactory, BatchOutputs, TokenizedInput
from embedloom.offload import start_thread
from embedloom.scope import batch_scope
from embedloom.sharing.plan import SharingPlan, Strategy
from embedloom.sharing.slots import ComputeSlots, SlotPermit

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

__all__ = [
    "BatchJob",
    "BatchSpan",
    "InferenceWorker",
    "ThreadFault",
    "ThreadedWorker",
    "WorkerStatistics",
    "build_worker",
]

logger = logging.getLogger("embedloom.sharing")

_RECENT_SPANS = 256

# What a batch gives back (``backends.base``).
Outputs = BatchOutputs


class BatchJob(Protocol):
    """One batch as the worker sees it; the methods are called on the worker's thread."""

    @property
    def batch_id(self) -> int: ...

    def request_ids(self) -> tuple[str, ...]:
        """The requests whose inputs ``take_inputs`` took (for the batch's log scope)."""
        ...

    def span_links(self) -> Sequence[SpanContext]:
        """The trace spans of those requests (empty when tracing is off)."""
        ...

    def take_inputs(self) -> Sequence[TokenizedInput]:
        """The inputs still wanted, at the moment the model is about to run them."""
        ...

    def run(self, backend: Backend, inputs: Sequence[TokenizedInput]) -> Outputs:
        """Run the batch's task on ``backend``: rows in input order."""
        ...

    def complete(
        self,
        vectors: Outputs | None,
        error: BaseException | None,
        seconds: float,
    ) -> None:
        """Report the outcome: vectors in input order, or the error the backend raised."""
        ...


@dataclass(frozen=True, slots=True)
class BatchSpan:
    """When one batch ran, and on which inference thread."""

    thread: int
    started: float
    finished: float
    inputs: int


@dataclass(frozen=True, slots=True)
class ThreadFault:
    """An inference thread found dead, or running one batch for too long.

    The worker has already given up on the thread: its slot is empty and the
    thread, if it ever returns, exits without reporting. ``job`` is the batch it
    held (None if it held none); its outcome will never be reported.
    """

    thread: int
    kind: Literal["died", "hung"]
    job: BatchJob | None
    seconds: float  # how long the job had been held when the fault was found

    def describe(self) -> str:
        if self.kind == "died":
            return f"inference thread {self.thread} died"
        return f"inference thread {self.thread} hung: one batch ran {self.seconds:.1f}s"


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    strategy: str
    replicas: int
    inference_threads: int
    threads_per_replica: int  # the most any inference thread's backend reports; 0 before load
    reported_threads: tuple[int, ...]  # intra-op threads per inference thread, as reported
    batches_run: int
    busy: int  # inference threads running a batch now
    alive: bool
    restarts: int  # inference threads replaced after dying or hanging
    recent_batches: tuple[BatchSpan, ...]


class InferenceWorker(Protocol):
    """Runs batches on threads that own model instances."""

    @property
    def capacity(self) -> int:
        """How many unfinished jobs it accepts at once (running + waiting to run)."""
        ...

    @property
    def parallelism(self) -> int:
        """How many jobs can run at the same moment."""
        ...

    def start(self) -> concurrent.futures.Future[Backend]:
        """Load the model(s); the future resolves to a backend usable for tokenising."""
        ...

    def submit(self, job: BatchJob) -> None: ...

    def find_faults(self, hang_after: float | None) -> list[ThreadFault]:
        """Give up on threads that died, or that have held one job longer than
        ``hang_after`` seconds (None: only dead ones)."""
        ...

    def restart(self, thread: int) -> concurrent.futures.Future[Backend]:
        """Start a fresh thread (and model) in a slot given up by ``find_faults``;
        the future resolves once its model is loaded."""
        ...

    def close(self, timeout: float | None = None) -> None: ...

    def statistics(self) -> WorkerStatistics: ...


class ThreadedWorker:
    """Inference threads pulling jobs from one hand-off queue.

    Each thread owns a model instance, or (``shared_model``) all threads take
    turns on one instance under a lock. Only an idle thread takes a job, so a
    batch always goes to an idle replica; the engine never submits more than
    ``capacity`` unfinished jobs (one waiting per thread beyond the running
    ones), so the hand-off stays bounded.

    Each slot has a generation. ``find_faults`` gives up on a dead or hung
    thread by moving its slot to the next generation; ``restart`` puts a new
    thread there. A Python thread cannot be killed, so a hung one is abandoned:
    if it ever returns it sees its generation is stale and exits without
    reporting or taking another job.
    """

    def __init__(
        self,
        factory: BackendFactory,
        *,
        strategy: Strategy,
        threads: int,
        shared_model: bool,
        clock: Callable[[], float] = time.perf_counter,
        slots: ComputeSlots | None = None,
        slots_per_batch: int = 1,
        owner: str = "model",
    ) -> None:
        """``slots``: the process's compute slots, of which each batch holds
        ``slots_per_batch`` (its replica's intra-op threads) for ``owner`` while it
        runs (None: no limit beyond this worker's own threads)."""
        if threads < 1:
            raise ValueError("a worker needs at least one thread")
        self._slots = slots
        self._slots_per_batch = slots_per_batch
        self._owner = owner
        self._factory = factory
        self._strategy = strategy
        self._thread_count = threads
        self._shared_model = shared_model
        self._clock = clock
        self.capacity = 2 * threads if not shared_model else threads
        self.parallelism = 1 if shared_model else threads
        # None is the stop signal, one per thread.
        self._jobs: queue.SimpleQueue[BatchJob | None] = queue.SimpleQueue()
        self._ready: concurrent.futures.Future[Backend] = concurrent.futures.Future()
        self._model_lock = threading.Lock()  # serialises runs when the model is shared
        self._state_lock = threading.Lock()
        self._shared: Backend | None = None
        self._loaded = 0
        self._reported: list[int] = [0] * threads
        self._threads: list[threading.Thread] = []
        self._generations = [0] * threads
        # The job each slot holds now and since when (held from taking it off the
        # hand-off queue: in ``locked`` a thread waiting for the lock holds one too).
        self._held: list[tuple[BatchJob, float] | None] = [None] * threads
        # The compute slots each slot's running batch holds.
        self._permits: list[SlotPermit | None] = [None] * threads
        self._closing = False
        self._restarts = 0
        self._batches_run = 0
        self._busy = 0
        self._spans: deque[BatchSpan] = deque(maxlen=_RECENT_SPANS)

    def start(self) -> concurrent.futures.Future[Backend]:
        if self._threads:
            raise RuntimeError("worker already started")
        self._threads = [
            self._start_slot(index, self._ready) for index in range(self._thread_count)
        ]
        return self._ready

    def _start_slot(
        self,
        index: int,
        loaded: concurrent.futures.Future[Backend],
    ) -> threading.Thread:
        generation = self._generations[index]
        return start_thread(
            functools.partial(self._run, index, generation, loaded),
            name=f"embedloom-{self._strategy}-{index}",
        )

    def submit(self, job: BatchJob) -> None:
        if not self._threads or not any(t.is_alive() for t in self._threads):
            raise RuntimeError("worker is not running")
        self._jobs.put(job)

    def find_faults(self, hang_after: float | None) -> list[ThreadFault]:
        now = self._clock()
        faults = []
        with self._state_lock:
            if self._closing or not self._ready.done():
                return []
            for index, thread in enumerate(self._threads):
                held = self._held[index]
                seconds = now - held[1] if held else 0.0
                if not thread.is_alive():
                    kind: Literal["died", "hung"] = "died"
                elif held is not None and hang_after is not None and seconds > hang_after:
                    kind = "hung"
                else:
                    continue
                self._generations[index] += 1
                self._held[index] = None
                if (permit := self._permits[index]) is not None:
                    # Its replacement needs them; if the hung thread ever computes
                    # again, it is one batch over budget, not the budget lost for good.
                    permit.release()
                    self._permits[index] = None
                if self._shared_model:
                    # The hung thread may hold the model and its lock forever: the
                    # new generation gets a model and a lock of its own.
                    self._shared = None
                    self._model_lock = threading.Lock()
                faults.append(ThreadFault(index, kind, held[0] if held else None, seconds))
        return faults

    def restart(self, thread: int) -> concurrent.futures.Future[Backend]:
        loaded: concurrent.futures.Future[Backend] = concurrent.futures.Future()
        with self._state_lock:
            if self._closing:
                loaded.set_exception(RuntimeError("the worker is closing"))
                return loaded
            self._restarts += 1
            self._reported[thread] = 0
            self._threads[thread] = self._start_slot(thread, loaded)
        return loaded

    def close(self, timeout: float | None = None) -> None:
        with self._state_lock:
            self._closing = True
        for _ in self._threads:
            self._jobs.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def statistics(self) -> WorkerStatistics:
        with self._state_lock:
            return WorkerStatistics(
                strategy=self._strategy,
                replicas=1 if self._shared_model else self._thread_count,
                inference_threads=self._thread_count,
                threads_per_replica=max(self._reported),
                reported_threads=tuple(self._reported),
                batches_run=self._batches_run,
                busy=self._busy,
                alive=bool(self._threads) and all(t.is_alive() for t in self._threads),
                restarts=self._restarts,
                recent_batches=tuple(self._spans),
            )

    def _load(self) -> Backend:
        if not self._shared_model:
            return self._factory()
        lock = self._model_lock
        with lock:
            if self._shared is None:
                self._shared = self._factory()
            return self._shared

    def _current(self, index: int, generation: int) -> bool:
        return self._generations[index] == generation

    def _run(
        self,
        index: int,
        generation: int,
        loaded: concurrent.futures.Future[Backend],
    ) -> None:
        try:
            backend = self._load()
            reported = backend.compute_threads()
        except BaseException as exc:
            with self._state_lock:
                if not loaded.done():
                    loaded.set_exception(exc)
            return
        with self._state_lock:
            self._reported[index] = reported
            if loaded is self._ready:
                self._loaded += 1
                if self._loaded == self._thread_count and not self._ready.done():
                    self._ready.set_result(backend)
            elif not loaded.done():
                loaded.set_result(backend)
        while True:
            job = self._jobs.get()
            with self._state_lock:
                if not self._current(index, generation):
                    # A job, or a stop signal meant for a live thread: theirs, not ours.
                    self._jobs.put(job)
                    return
                if job is None:
                    return
                self._held[index] = (job, self._clock())
            if self._shared_model:
                lock = self._model_lock
                with lock:
                    self._run_job(index, generation, backend, job)
            else:
                self._run_job(index, generation, backend, job)
            with self._state_lock:
                if not self._current(index, generation):
                    return  # given up on while running: the slot has a new thread
                self._held[index] = None

    def _run_job(self, index: int, generation: int, backend: Backend, job: BatchJob) -> None:
        permit = self._take_slots(index, generation, job)
        with self._state_lock:
            if not self._current(index, generation):
                if permit is not None:
                    permit.release()
                return  # given up on while waiting for the lock or the slots
            self._busy += 1
        started = self._clock()
        inputs: Sequence[TokenizedInput] = ()
        outcome: tuple[Outputs | None, BaseException | None] | None = None
        try:
            inputs = job.take_inputs()
            with batch_scope(job.batch_id, job.request_ids()):
                try:
                    logger.debug("running batch %d: %d inputs", job.batch_id, len(inputs))
                    with tracing.batch_span(job.batch_id, len(inputs), job.span_links()):
                        outcome = (job.run(backend, inputs) if inputs else None, None)
                except Exception as exc:
                    logger.exception("batch %d failed in the backend", job.batch_id)
                    outcome = (None, exc)
        finally:
            # The statistics count the batch before anyone hears of its outcome.
            finished = self._clock()
            if permit is not None:
                permit.release()
            with self._state_lock:
                if self._current(index, generation):
                    self._permits[index] = None
                self._busy -= 1
                self._batches_run += 1
                if inputs:
                    self._spans.append(BatchSpan(index, started, finished, len(inputs)))
                # A thread given up on reports nothing: its job was already failed.
                report = self._current(index, generation)
        if report and outcome is not None:
            vectors, error = outcome
            job.complete(vectors, error, finished - started)

    def _take_slots(self, index: int, generation: int, job: BatchJob) -> SlotPermit | None:
        """Wait for this batch's compute slots. The wait is not running: the job's
        hang timer starts again once they are held."""
        if self._slots is None:
            return None
        permit = self._slots.acquire(self._owner, self._slots_per_batch)
        with self._state_lock:
            if self._current(index, generation):
                self._permits[index] = permit
                self._held[index] = (job, self._clock())
        return permit

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<ThreadedWorker {stats.strategy} threads={stats.inference_threads} "
            f"alive={stats.alive} busy={stats.busy} batches={stats.batches_run}>"
        )


def build_worker(
    plan: SharingPlan,
    factory: BackendFactory,
    *,
    clock: Callable[[], float] = time.perf_counter,
    slots: ComputeSlots | None = None,
    owner: str = "model",
) -> ThreadedWorker:
    return ThreadedWorker(
        factory,
        strategy=plan.strategy,
        threads=plan.inference_threads,
        shared_model=plan.strategy == "locked",
        clock=clock,
        slots=slots,
        slots_per_batch=plan.threads_per_replica,
        owner=owner,
    )
