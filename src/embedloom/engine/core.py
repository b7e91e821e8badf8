"""The engine: admits requests, batches their inputs, returns each request its vectors.

Data path of one ``embed`` call, all bookkeeping on the event loop's thread
(so the queue needs no lock):

    admit (fail fast: Overloaded)  →  tokenise on an offload thread
      →  queue of inputs  →  plan_batch (pure)  →  worker thread runs the model
      →  rows written back into each request  →  the request's future resolves

A request's inputs may be spread over several batches; each row is written
at its own index, so outputs come back in the request's order and never mix
with another request's. A request whose caller goes away is removed from the
queue at once; if a batch holding it is already waiting, the worker skips it.

Faults stay as small as they can. A batch the backend fails on is split in
two and each half retried ahead of the queue, down to the single input that
fails (a poisoned input fails only its own request). A watchdog finds
inference threads that died or hang: the engine reports unhealthy, fails
what was queued at once (rather than letting it wait on a model that may
never answer) and refuses new work until the thread and its model are
replaced.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Self

import numpy as np
import numpy.typing as npt

from embedloom import tracing
from embedloom.backends.base import Backend, BackendFactory, TokenizedInput
from embedloom.batching import BatchPolicy, plan_batch
from embedloom.config import Settings
from embedloom.engine.api import Embeddings, EngineState, ModelInfo, Offload
from embedloom.engine.statistics import EngineStatistics
from embedloom.engine.work import Job, QueuedInput, Request
from embedloom.errors import (
    BackendError,
    DeadlineExceeded,
    EmbedloomError,
    InputTooLong,
    InvalidInput,
    Overloaded,
    TooManyInputs,
    Unavailable,
)
from embedloom.memory import keep_native_memory_flat
from embedloom.offload import run_in_thread
from embedloom.scope import PRIORITIES, Priority, current_scope
from embedloom.setup import ModelSetup
from embedloom.sharing import (
    InferenceWorker,
    SharingPlan,
    ThreadFault,
    build_worker,
)
from embedloom.stats import Histogram, RateEstimator
from embedloom.variants.choice import Choice

__all__ = ["Engine"]

# The name is the package's: log readers filter on "embedloom.engine".
logger = logging.getLogger("embedloom.engine")


_BATCH_SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BOUNDS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_INPUT_TOKEN_BOUNDS = (8, 16, 32, 64, 128, 256, 512, 1024)
_SECONDS_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Retry-After is a hint; keep it within what a client would sensibly wait.
_RETRY_AFTER_RANGE = (1.0, 60.0)
# Admission per priority class: the share of the admission bound that work of
# each class may fill, so a flood of low (or normal) priority work always leaves
# room for high. A request larger than its class's share is still admitted into
# an engine holding nothing else.
_CLASS_SHARE: dict[Priority, float] = {"high": 1.0, "normal": 0.9, "low": 0.5}

# How often the watchdog looks at the inference threads, at most; a shorter hang
# limit is checked four times per limit.
_WATCHDOG_INTERVAL = 1.0

_Vectors = npt.NDArray[np.float32]
# Without a plan: one inference thread, the backend's own thread settings.
_DEDICATED = SharingPlan("dedicated", 1, 1, 0, 0, "the default")


class Engine:
    """Owns the model and the queue in front of it. Use as ``async with Engine(...)``,
    or call ``start()`` and ``close()``; an engine is not reopened after closing."""

    def __init__(
        self,
        backend_factory: BackendFactory,
        *,
        settings: Settings | None = None,
        model_id: str = "custom",
        model_names: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        sharing: SharingPlan | None = None,
        worker: InferenceWorker | None = None,
        offload: Offload = run_in_thread,
        batch_per_request: bool = False,
        tune_memory: bool = False,
        choice: Choice | None = None,
    ) -> None:
        """``choice``: how the backend was chosen, for ``model_info``.
        ``batch_per_request``: never mix requests in a batch, so a request's
        batches (and so its vectors, bit for bit) do not depend on what else was
        queued; the batch job uses it to make runs reproducible. ``tune_memory``:
        on start, keep the process's native memory flat (``memory.py``)."""
        self._tune_memory = tune_memory
        self._choice = choice
        self._settings = settings or Settings()
        self._offload = offload
        self._sharing = sharing or _DEDICATED
        self._policy = BatchPolicy(
            max_batch_tokens=self._settings.max_batch_tokens,
            max_batch_size=self._settings.max_batch_size,
            overhead_tokens=self._settings.batch_overhead_tokens,
            one_request_per_batch=self._sharing.strategy == "locked" or batch_per_request,
        )
        self._clock = clock
        self._worker = worker or build_worker(self._sharing, backend_factory, clock=clock)
        self._model_id = model_id
        self._model_names = tuple(dict.fromkeys((model_id, *model_names)))
        self._state = EngineState.CREATED
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backend: Backend | None = None
        self._queue: deque[QueuedInput] = deque()
        # Halves of failed batches, run before anything new is planned.
        self._retries: deque[list[QueuedInput]] = deque()
        # Batches handed to the worker and not yet finished (nor given up on).
        self._jobs: dict[int, Job] = {}
        # Inference threads being replaced → why; the engine is unhealthy meanwhile.
        self._recovering: dict[int, str] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._serving = asyncio.Event()  # running, with every inference thread in place
        self._admitted = 0
        self._next_batch_id = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_rate = RateEstimator()
        self._counts = dict.fromkeys(
            (
                "requests_admitted",
                "requests_completed",
                "requests_failed",
                "requests_rejected",
                "requests_cancelled",
                "requests_expired",
                "batches_split",
                "inference_restarts",
                "inputs_embedded",
                "inputs_dropped",
                "batches_run",
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

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        preload: bool = False,
        batch_per_request: bool = False,
    ) -> Engine:
        """An engine on ``settings.model``, run by the variant ``settings.backend``
        and ``settings.dtype`` choose (see ``variants.choice``), shared as
        ``settings.sharing`` says within the thread budget.

        With ``preload`` the weights are read now, in the calling thread, and every
        replica adopts them: the master of a pre-forking server loads once and its
        workers share the pages copy-on-write. Nothing runs on them here.
        """
        from embedloom.variants.catalog import open_variant

        setup = ModelSetup.for_settings(settings)
        factory = open_variant(
            setup.choice.variant,
            setup.model.path,
            setup.store,
            threads=setup.plan.threads_per_replica,
            device=setup.device,
            preload=preload,
        )
        return cls(
            factory,
            choice=setup.choice,
            settings=settings,
            model_id=setup.model.id,
            model_names=setup.model.names,
            clock=clock,
            sharing=setup.plan,
            batch_per_request=batch_per_request,
            tune_memory=True,
        )

    @staticmethod
    def choose_backend(settings: Settings) -> Choice:
        """What ``from_settings`` will run ``settings.model`` with, trying the variants
        now (in a child process) if this machine has not yet. A pre-forking server's
        master calls it so its workers find the choice made instead of all waiting
        on one trial."""
        return ModelSetup.for_settings(settings).choice

    @property
    def sharing(self) -> SharingPlan:
        return self._sharing

    # -- lifecycle ---------------------------------------------------------------

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def healthy(self) -> bool:
        return self.unhealthy_reason is None

    @property
    def unhealthy_reason(self) -> str | None:
        """Why the engine cannot serve now (None while it can)."""
        if self._state is not EngineState.RUNNING:
            return f"the engine is {self._state.value}"
        if self._recovering:
            return "; ".join(self._recovering.values())
        if not self._worker.statistics().alive:
            return "an inference thread is not running"
        return None

    @property
    def model_info(self) -> ModelInfo:
        backend = self._require_backend()
        return ModelInfo(
            model_id=self._model_id,
            names=self._model_names,
            backend=backend.name,
            dtype=backend.dtype,
            dimensions=backend.dimensions,
            max_input_tokens=backend.max_input_tokens,
            normalizes=backend.normalizes,
            choice_reason=self._choice.reason if self._choice else None,
            gate=self._choice.gate if self._choice else None,
        )

    async def start(self) -> None:
        """Load the model on its inference thread and warm it up."""
        if self._state is not EngineState.CREATED:
            raise RuntimeError(f"cannot start an engine that is {self._state.value}")
        self._state = EngineState.STARTING
        self._loop = asyncio.get_running_loop()
        if self._tune_memory:
            # Here, not when built: a pre-forking master builds the engine, and the
            # trimming thread must start in each worker, after the fork.
            keep_native_memory_flat()
        try:
            self._backend = await asyncio.wrap_future(self._worker.start())
        except BaseException as exc:
            self._state = EngineState.CLOSED
            if isinstance(exc, Exception) and not isinstance(exc, BackendError):
                raise BackendError(f"the model failed to load: {exc}") from exc
            raise
        if self._settings.max_batch_tokens < self._backend.max_input_tokens:
            logger.warning(
                "max_batch_tokens (%d) is below the model's maximum input length (%d): "
                "the longest inputs will run in batches of their own",
                self._settings.max_batch_tokens,
                self._backend.max_input_tokens,
            )
        self._state = EngineState.RUNNING
        # The first call allocates the model's working memory; pay for it now.
        await self.embed(["warm up"], truncate=True)
        self._serving.set()
        self._schedule_watchdog()

    async def wait_until_serving(self) -> None:
        """Return once the engine is running with every inference thread in place:
        at once normally; after a restart of a dead or hung thread, when it is back."""
        await self._serving.wait()

    def begin_drain(self) -> None:
        """Stop admitting new work; admitted work continues. Safe to call repeatedly."""
        if self._state in (EngineState.CREATED, EngineState.STARTING, EngineState.RUNNING):
            self._state = EngineState.DRAINING
            logger.info("draining: %d inputs still admitted", self._admitted)

    async def drain(self) -> None:
        """Stop admitting and wait until admitted work is done (bound it with asyncio.timeout)."""
        self.begin_drain()
        await self._idle.wait()

    async def close(self, grace: float | None = None) -> None:
        """Drain for up to ``grace`` seconds (None: as long as it takes), fail whatever is
        left with ``Unavailable``, and stop the worker."""
        if self._state is EngineState.CLOSED:
            return
        try:
            async with asyncio.timeout(grace):
                await self.drain()
        except TimeoutError:
            self._fail_waiting(Unavailable("the engine closed before this request ran"))
        self._state = EngineState.CLOSED
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self._offload(self._worker.close, grace)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- embedding -----------------------------------------------------------------

    async def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = None,
        truncate: bool = False,
        dimensions: int | None = None,
        # A deadline the engine acts on (expired inputs are dropped unrun), which
        # wrapping the call in asyncio.timeout would not do.
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority | None = None,
    ) -> Embeddings:
        """Embed ``texts``; vectors in input order.

        ``normalize``: L2-normalise (None: as the model's configuration does).
        ``truncate``: cut over-long inputs instead of raising ``InputTooLong``.
        ``dimensions``: keep the first N dimensions (Matryoshka-style), normalised
        afterwards if normalising.
        ``timeout``: seconds from now after which the request fails with
        ``DeadlineExceeded`` and its inputs are dropped unrun (None: the request
        scope's deadline, if any). ``priority``: high, normal or low (None: the
        request scope's).
        """
        if self._state is not EngineState.RUNNING:
            raise Unavailable(f"the engine is {self._state.value}, not accepting requests")
        if self._recovering:
            raise Unavailable(f"the model is restarting ({self.unhealthy_reason}); retry shortly")
        backend = self._require_backend()
        texts = _validated_texts(texts)
        width = _validated_dimensions(dimensions, backend.dimensions)
        scope = current_scope()
        if priority is None:
            priority = scope.priority if scope else "normal"
        elif priority not in PRIORITIES:
            raise InvalidInput(f"priority must be one of {', '.join(PRIORITIES)}", param="priority")
        deadline = scope.deadline if scope else None
        if timeout is not None:
            if timeout <= 0:
                raise InvalidInput("timeout must be positive", param="timeout")
            deadline = self._clock() + timeout
        request = self._admit(len(texts), backend, width, normalize, deadline, priority)
        try:
            try:
                with tracing.span("embedloom.tokenize", inputs=len(texts)):
                    tokenized = await self._offload(backend.tokenize, texts)
            except (TypeError, ValueError, UnicodeError) as exc:
                raise InvalidInput(f"input could not be tokenized: {exc}", param="input") from exc
            for index, item in enumerate(tokenized):
                if item.truncated and not truncate:
                    raise InputTooLong(index=index, max_tokens=backend.max_input_tokens)
            if not request.future.done():  # it may have expired while tokenising
                self._enqueue(request, tokenized)
            return await request.future
        except BaseException as exc:
            self._abandon(request, exc)
            raise

    def admission_limit(self, priority: Priority = "normal") -> int:
        """How many inputs may be admitted in all when a request of ``priority`` arrives
        (the bound for high; less for normal and low, so a flood of those always
        leaves room for high)."""
        limit = self._settings.max_queued_inputs
        return limit if priority == "high" else max(1, int(limit * _CLASS_SHARE[priority]))

    async def embed_stream(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = None,
        truncate: bool = False,
        dimensions: int | None = None,
        priority: Priority | None = None,
        chunk_size: int | None = None,
        in_flight: int = 3,
    ) -> AsyncGenerator[tuple[int, npt.NDArray[np.float32]], None]:
        """Embed a long list, yielding ``(index, vector)`` in input order as they are done.

        The list goes through the engine ``chunk_size`` inputs at a time (default:
        one batch), at most ``in_flight`` chunks admitted at once, so a huge
        request holds a few batches of queue and results at a time, and other
        requests interleave with it. Each chunk is admitted like a request: under
        overload the stream fails with ``Overloaded``. Leaving the iteration (or
        cancelling) drops the chunks not yet run, counted in ``inputs_dropped``.
        Deadlines come from the request scope.
        """
        texts = _validated_texts(texts)
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        chunk = chunk_size or self._settings.max_batch_size
        pending: deque[tuple[int, asyncio.Future[Embeddings]]] = deque()
        next_start = 0
        try:
            while next_start < len(texts) or pending:
                while next_start < len(texts) and len(pending) < in_flight:
                    part = texts[next_start : next_start + chunk]
                    work = self.embed(
                        part,
                        normalize=normalize,
                        truncate=truncate,
                        dimensions=dimensions,
                        priority=priority,
                    )
                    pending.append((next_start, asyncio.ensure_future(work)))
                    next_start += len(part)
                start, task = pending.popleft()
                try:
                    result = await task
                except InputTooLong as exc:  # its index is within the chunk
                    raise InputTooLong(index=start + exc.index, max_tokens=exc.max_tokens) from None
                for offset, vector in enumerate(result.vectors):
                    yield start + offset, vector
        finally:
            # Everything that matters happens before the first await: a caller
            # cancelled under a level-triggered cancel scope (anyio, so Starlette)
            # is cancelled again at every await, and the rest would never run.
            # Inputs never handed to the engine count as dropped; the cancelled
            # chunks drop (and count) their own queued inputs as they unwind.
            self._counts["inputs_dropped"] += len(texts) - next_start
            for _, task in pending:
                task.cancel()
            await asyncio.gather(*(task for _, task in pending), return_exceptions=True)

    def _admit(
        self,
        size: int,
        backend: Backend,
        width: int,
        normalize: bool | None,
        deadline: float | None,
        priority: Priority,
    ) -> Request:
        limit = self._settings.max_queued_inputs
        if size > limit:
            raise TooManyInputs(count=size, limit=limit)
        share = self.admission_limit(priority)
        if self._admitted + size > share and self._admitted > 0:
            self._counts["requests_rejected"] += 1
            retry_after = self._retry_after()
            raise Overloaded(
                f"at capacity for {priority} priority: {self._admitted} inputs admitted, "
                f"{share} allowed; retry in about {retry_after:.0f}s",
                retry_after=retry_after,
            )
        assert self._loop is not None
        scope = current_scope()
        request = Request(
            self._loop.create_future(),
            size,
            backend.dimensions,
            width,
            backend.normalizes if normalize is None else normalize,
            scope.request_id if scope else None,
            deadline,
            priority,
        )
        request.admitted_at = self._clock()
        request.span = tracing.current_span_context()
        if deadline is not None:
            # Expiry while queued; the batcher also skips expired inputs itself.
            delay = max(0.0, deadline - self._clock())
            request.timer = self._loop.call_later(delay, self._expire, request)
        self._admitted += size
        self._idle.clear()
        self._counts["requests_admitted"] += 1
        logger.debug(
            "admitted %d inputs at %s priority (%d admitted in all)",
            size,
            priority,
            self._admitted,
            extra={"priority": priority},
        )
        return request

    def _enqueue(self, request: Request, tokenized: list[TokenizedInput]) -> None:
        now = self._clock()
        for index, tokens in enumerate(tokenized):
            self._queue.append(QueuedInput(request, index, tokens, now))
            self._input_length.observe(tokens.n_tokens)
            request.tokens += tokens.n_tokens
        self._counts["input_tokens"] += request.tokens
        request.enqueued = True
        if request.span is not None:
            request.queued_ns = tracing.now_ns()
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand batches to the worker while it has room and the planner says go."""
        assert self._loop is not None
        while self._retries and len(self._jobs) < self._worker.capacity:
            self._submit(self._retries.popleft())
        while self._queue and len(self._jobs) < self._worker.capacity:
            idle = len(self._jobs) < self._worker.parallelism
            plan = plan_batch(self._queue, self._policy, model_idle=idle, now=self._clock())
            if plan is None:
                return
            if plan.expired:
                queued = list(self._queue)
                for request in {
                    id(r): r for r in (queued[i].request for i in plan.expired)
                }.values():
                    self._expire(request)
                continue
            items = self._take(plan.positions)
            now = self._clock()
            for item in items:
                self._queue_seconds.observe(now - item.enqueued_at)
            if tracing.enabled():
                self._trace_queue_wait(items)
            self._submit(items)

    def _submit(self, items: list[QueuedInput]) -> None:
        assert self._loop is not None
        self._next_batch_id += 1
        job = Job(self._next_batch_id, items, self._loop, self._on_job_done, self._clock)
        self._jobs[job.batch_id] = job
        self._worker.submit(job)

    def _take(self, positions: Sequence[int]) -> list[QueuedInput]:
        """Remove the inputs at ``positions`` (ascending) from the front of the queue."""
        head = [self._queue.popleft() for _ in range(positions[-1] + 1)]
        chosen = set(positions)
        self._queue.extendleft(reversed([q for i, q in enumerate(head) if i not in chosen]))
        return [head[i] for i in positions]

    def _on_job_done(
        self,
        job: Job,
        vectors: npt.NDArray[np.float32] | None,
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
            self._release(item.request, 1)
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
            self._release(item.request, 1)
            self._fail(item.request, failure)
        elif taken:
            assert vectors is not None
            for row, item in enumerate(taken):
                self._deliver(item, vectors[row])
        self._dispatch()

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
        self._counts["padded_tokens"] += padded
        self._batch_size.observe(len(taken))
        self._batch_tokens.observe(padded)
        self._inference_seconds.observe(seconds)
        self._drain_rate.record(len(taken), seconds)

    def _deliver(self, item: QueuedInput, vector: npt.NDArray[np.float32]) -> None:
        request = item.request
        self._release(request, 1)
        if request.future.done():
            return
        request.raw[item.index] = vector
        request.unfinished -= 1
        self._counts["inputs_embedded"] += 1
        if request.unfinished == 0:
            if request.timer is not None:
                request.timer.cancel()
            if request.span is not None:
                tracing.record_span(
                    "embedloom.inference", request.span, request.first_batch_ns, tracing.now_ns()
                )
            request.future.set_result(
                Embeddings(
                    _finish(request.raw, request.dimensions, request.normalize),
                    request.tokens,
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

    def _abandon(self, request: Request, reason: BaseException) -> None:
        """The caller left (cancelled or raised): free everything not already running."""
        if isinstance(reason, asyncio.CancelledError):
            self._counts["requests_cancelled"] += 1
        if request.timer is not None:
            request.timer.cancel()
        request.cancelled = True
        if not request.enqueued:
            self._release(request, request.unreleased)
            return
        dropped = self._remove_queued(request)
        self._counts["inputs_dropped"] += dropped

    def _remove_queued(self, request: Request) -> int:
        before = len(self._queue)
        if before:
            self._queue = deque(q for q in self._queue if q.request is not request)
        removed = before - len(self._queue)
        if self._retries:
            kept = [[q for q in part if q.request is not request] for part in self._retries]
            removed += sum(map(len, self._retries)) - sum(map(len, kept))
            self._retries = deque(part for part in kept if part)
        self._release(request, removed)
        return removed

    def _fail_waiting(self, error: EmbedloomError) -> None:
        """Fail every request with inputs queued or waiting for a retry."""
        waiting = [q.request for q in self._queue]
        waiting += [q.request for part in self._retries for q in part]
        for request in {id(r): r for r in waiting}.values():
            self._fail(request, error)

    # -- the watchdog ----------------------------------------------------------------

    def _schedule_watchdog(self) -> None:
        assert self._loop is not None
        limit = self._settings.inference_timeout
        interval = min(_WATCHDOG_INTERVAL, limit / 4) if limit else _WATCHDOG_INTERVAL
        self._watchdog = self._loop.call_later(interval, self._watch)

    def _watch(self) -> None:
        if self._state is EngineState.CLOSED:
            return
        faults = self._worker.find_faults(self._settings.inference_timeout or None)
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
            self._serving.clear()
            job = self._jobs.pop(fault.job.batch_id, None) if isinstance(fault.job, Job) else None
            if job is not None and not job.finished:
                job.abandoned = True
                failure = BackendError(
                    f"the model stopped answering ({reason}) while running this request"
                )
                for item in job.items:
                    self._release(item.request, 1)
                    self._fail(item.request, failure)
            restarted = asyncio.wrap_future(self._worker.restart(fault.thread), loop=self._loop)
            restarted.add_done_callback(functools.partial(self._on_restarted, fault.thread))
        self._fail_waiting(
            Unavailable(f"the model is restarting ({self.unhealthy_reason}); retry shortly")
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
            self._serving.set()
            self._dispatch()

    def _release(self, request: Request, count: int) -> None:
        if count <= 0:
            return
        request.unreleased -= count
        self._admitted -= count
        if self._admitted == 0:
            self._idle.set()

    def _retry_after(self) -> float:
        rate = self._drain_rate.rate
        estimate = self._admitted / rate if rate else _RETRY_AFTER_RANGE[0]
        return min(max(estimate, _RETRY_AFTER_RANGE[0]), _RETRY_AFTER_RANGE[1])

    def _require_backend(self) -> Backend:
        if self._backend is None:
            raise Unavailable("the engine has not started")
        return self._backend

    # -- observation ---------------------------------------------------------------

    def statistics(self) -> EngineStatistics:
        return EngineStatistics(
            state=self._state.value,
            queued_inputs=len(self._queue),
            admitted_inputs=self._admitted,
            max_queued_inputs=self._settings.max_queued_inputs,
            running_batches=len(self._jobs),
            batch_size=self._batch_size.snapshot(),
            batch_tokens=self._batch_tokens.snapshot(),
            input_length=self._input_length.snapshot(),
            queue_seconds=self._queue_seconds.snapshot(),
            inference_seconds=self._inference_seconds.snapshot(),
            worker=self._worker.statistics(),
            **self._counts,
        )

    def __repr__(self) -> str:
        return (
            f"<Engine {self._model_id} state={self._state.value} queued={len(self._queue)} "
            f"admitted={self._admitted}/{self._settings.max_queued_inputs} "
            f"running_batches={len(self._jobs)}>"
        )


def _validated_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise InvalidInput("input must be a list of strings", param="input")
    if not texts:
        raise InvalidInput("input must not be empty", param="input")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInput(f"input {index} is not a string", param="input")
        if not text:
            raise InvalidInput(f"input {index} is an empty string", param="input")
    return list(texts)


def _validated_dimensions(dimensions: int | None, model_dimensions: int) -> int:
    if dimensions is None:
        return model_dimensions
    if isinstance(dimensions, bool) or not isinstance(dimensions, int):
        raise InvalidInput("dimensions must be an integer", param="dimensions")
    if not 1 <= dimensions <= model_dimensions:
        raise InvalidInput(
            f"dimensions must be between 1 and {model_dimensions}, got {dimensions}",
            param="dimensions",
        )
    return dimensions


def _finish(
    raw: npt.NDArray[np.float32], dimensions: int, normalize: bool
) -> npt.NDArray[np.float32]:
    vectors = raw[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        # Same floor as torch.nn.functional.normalize, so zero vectors stay zero.
        vectors = vectors / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)
