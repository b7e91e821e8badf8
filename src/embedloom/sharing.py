"""Who runs a batch, on which thread: the model-sharing strategies.

A model cannot simply be called from every request thread (torch's thread
pool is process-global, and the model's buffers are not meant for concurrent
use), so the engine hands batches to a worker that owns the model. The worker
knows nothing of asyncio or requests: it takes ``BatchJob``s and reports each
outcome back through the job.

``DedicatedWorker`` — one inference thread that owns one model — is the
strategy for one device; other strategies implement the same ``InferenceWorker``
protocol.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from embedloom.backends.base import Backend, BackendFactory, TokenizedInput
from embedloom.offload import start_thread

__all__ = ["BatchJob", "DedicatedWorker", "InferenceWorker", "WorkerStatistics"]

logger = logging.getLogger(__name__)


class BatchJob(Protocol):
    """One batch as the worker sees it; both methods are called on the worker's thread."""

    def take_inputs(self) -> Sequence[TokenizedInput]:
        """The inputs still wanted, at the moment the model is about to run them."""
        ...

    def complete(
        self,
        vectors: npt.NDArray[np.float32] | None,
        error: BaseException | None,
        seconds: float,
    ) -> None:
        """Report the outcome: vectors in input order, or the error the backend raised."""
        ...


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    strategy: str
    inference_threads: int
    batches_run: int
    busy: bool
    alive: bool


class InferenceWorker(Protocol):
    """Runs batches on threads that own model instances."""

    @property
    def capacity(self) -> int:
        """How many unfinished jobs it accepts at once (running + waiting to run)."""
        ...

    def start(self) -> concurrent.futures.Future[Backend]:
        """Load the model(s); the future resolves to a backend usable for tokenising."""
        ...

    def submit(self, job: BatchJob) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...

    def statistics(self) -> WorkerStatistics: ...


class DedicatedWorker:
    """One inference thread that loads and owns one model.

    The hand-off holds one job beyond the running one (``capacity`` 2), so the
    next batch can be waiting the moment the model frees up, and no more: a
    deeper hand-off would only hide queueing from the batcher.
    """

    capacity = 2

    def __init__(
        self,
        factory: BackendFactory,
        *,
        name: str = "embedloom-inference",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._factory = factory
        self._name = name
        self._clock = clock
        # Bounded by the engine, which never submits more than ``capacity`` jobs.
        # None is the stop signal.
        self._jobs: queue.SimpleQueue[BatchJob | None] = queue.SimpleQueue()
        self._ready: concurrent.futures.Future[Backend] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None
        self._batches_run = 0
        self._busy = False

    def start(self) -> concurrent.futures.Future[Backend]:
        if self._thread is not None:
            raise RuntimeError("worker already started")
        self._thread = start_thread(self._run, name=self._name)
        return self._ready

    def submit(self, job: BatchJob) -> None:
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("worker is not running")
        self._jobs.put(job)

    def close(self, timeout: float | None = None) -> None:
        if self._thread is None:
            return
        self._jobs.put(None)
        self._thread.join(timeout)

    def statistics(self) -> WorkerStatistics:
        alive = self._thread is not None and self._thread.is_alive()
        return WorkerStatistics("dedicated", 1, self._batches_run, self._busy, alive)

    def _run(self) -> None:
        try:
            backend = self._factory()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(backend)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._run_job(backend, job)

    def _run_job(self, backend: Backend, job: BatchJob) -> None:
        self._busy = True
        started = self._clock()
        try:
            inputs = job.take_inputs()
            vectors = backend.embed(inputs) if inputs else None
        except Exception as exc:
            logger.exception("batch failed in the backend")
            job.complete(None, exc, self._clock() - started)
        else:
            job.complete(vectors, None, self._clock() - started)
        finally:
            self._busy = False
            self._batches_run += 1

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<DedicatedWorker alive={stats.alive} busy={stats.busy} batches={stats.batches_run}>"
        )
