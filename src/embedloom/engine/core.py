"""The engine: the public face of a model — lifecycle, health, model info, and
``embed`` (the other tasks' calls, ``score``, ``embed_sparse`` and the rest, are
in ``task_calls``; they all end in ``_submit``).

Data path of one ``embed`` call, all bookkeeping on the event loop's thread:

    admit (fail fast: Overloaded, ``admission``)  →  tokenise on an offload thread
      →  queue of inputs  →  plan_batch (pure)  →  worker thread runs the model
      →  rows written back into each request  →  the request's future resolves
      (the queue onwards: ``scheduler``)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Self

from embedloom import tracing
from embedloom.backends.base import (
    Backend,
    BackendFactory,
    ModelInput,
    Task,
    TokenizedInput,
)
from embedloom.batching import BatchPolicy
from embedloom.config import Settings, SettingsError
from embedloom.engine.admission import Admission
from embedloom.engine.api import Embeddings, EngineState, ModelInfo, Offload
from embedloom.engine.scheduler import Scheduler
from embedloom.engine.statistics import EngineStatistics
from embedloom.engine.task_calls import TaskCalls, TruncationDirection
from embedloom.engine.work import (
    Request,
    validated_dimensions,
    validated_inputs,
)
from embedloom.errors import (
    BackendError,
    InputTooLong,
    InvalidInput,
    NotThisTask,
    Overloaded,
    Unavailable,
)
from embedloom.memory import keep_native_memory_flat
from embedloom.offload import run_in_thread
from embedloom.prompts import ModelPrompts, pooling_mode
from embedloom.scope import DEFAULT_TENANT, PRIORITIES, Priority, current_scope
from embedloom.setup import ModelSetup
from embedloom.sharing import (
    InferenceWorker,
    SharingPlan,
    build_worker,
)
from embedloom.sharing.slots import ComputeSlots
from embedloom.tasks import ScoreHead, model_kind, score_head, what_it_does
from embedloom.variants.choice import Choice

__all__ = ["Engine"]

# The name is the package's: log readers filter on "embedloom.engine".
logger = logging.getLogger("embedloom.engine")


# What a task does, for a message saying a model cannot.
_TASK_WORDS: dict[Task, str] = {
    "embed": "embed texts into dense vectors",
    "tokens": "give per-token vectors",
    "score": "score text pairs (rerank, predict)",
    "sparse": "make sparse vectors",
}

# Without a plan: one inference thread, the backend's own thread settings.
_DEDICATED = SharingPlan("dedicated", 1, 1, 0, 0, "the default")


class Engine(TaskCalls):
    """Owns the model and the queue in front of it. Use as ``async with Engine(...)``,
    or call ``start()`` and ``close()``; an engine is not reopened after closing."""

    def __init__(
        self,
        backend_factory: BackendFactory,
        *,
        settings: Settings | None = None,
        model_id: str = "custom",
        model_names: Sequence[str] = (),
        sharing: SharingPlan | None = None,
        worker: InferenceWorker | None = None,
        offload: Offload = run_in_thread,
        batch_per_request: bool = False,
        tune_memory: bool = False,
        choice: Choice | None = None,
        slots: ComputeSlots | None = None,
        name: str | None = None,
        prompts: ModelPrompts | None = None,
        pooling: str | None = None,
        head: ScoreHead | None = None,
    ) -> None:
        """``choice``: how the backend was chosen, for ``model_info``.
        ``prompts``: the model's named prompts (``prompts.py``); ``pooling``: how
        it pools, and ``head``: a cross-encoder's labels and activation, for
        ``model_info``.
        ``slots``: the process's compute slots, shared with the other models it
        serves (default: slots of this engine's own, its plan's thread budget).
        ``name``: the name the model is served under (default: ``model_id``).
        ``batch_per_request``: never mix requests in a batch, so a request's
        batches (and so its vectors, bit for bit) do not depend on what else was
        queued; the batch job uses it to make runs reproducible. ``tune_memory``:
        on start, keep the process's native memory flat (``memory.py``)."""
        self._tune_memory = tune_memory
        self._choice = choice
        self._prompts = prompts or ModelPrompts()
        self._pooling = pooling
        self._head = head
        self._settings = settings or Settings()
        self._offload = offload
        self._sharing = sharing or _DEDICATED
        policy = BatchPolicy(
            max_batch_tokens=self._settings.max_batch_tokens,
            max_batch_size=self._settings.max_batch_size,
            overhead_tokens=self._settings.batch_overhead_tokens,
            one_request_per_batch=self._sharing.strategy == "locked" or batch_per_request,
        )
        if slots is None and self._sharing.budget:
            slots = ComputeSlots(self._sharing.budget)
        self._slots = slots
        self._worker = worker or build_worker(
            self._sharing,
            backend_factory,
            # Batch times and hang detection on the loop's clock too, read lazily:
            # the loop is known only once the engine starts.
            clock=self._time,
            slots=slots,
            owner=name or model_id,
        )
        self._name = name or model_id
        self._model_id = model_id
        self._model_names = tuple(dict.fromkeys((model_id, *model_names)))
        self._state = EngineState.CREATED
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backend: Backend | None = None
        self._admission = Admission(self._settings.max_queued_inputs)
        self._scheduler = Scheduler(
            self._worker,
            policy,
            self._admission,
            inference_timeout=self._settings.inference_timeout,
            fifo=self._settings.scheduling == "fifo",
            others_backlog=self._others_backlog if slots is not None else None,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        preload: bool = False,
        batch_per_request: bool = False,
        slots: ComputeSlots | None = None,
        name: str | None = None,
    ) -> Engine:
        """An engine on ``settings.model``, run by the variant ``settings.backend``
        and ``settings.dtype`` choose (see ``variants.choice``), shared as
        ``settings.sharing`` says within the thread budget.

        With ``preload`` the weights are read now, in the calling thread, and every
        replica adopts them: the master of a pre-forking server loads once and its
        workers share the pages copy-on-write. Nothing runs on them here.
        ``slots``: compute slots shared with other engines; ``name``: the name the
        model is served under (default: its id).
        """
        from embedloom.variants.catalog import open_variant

        setup = ModelSetup.for_settings(settings)
        try:
            prompts = ModelPrompts.read(setup.model.path).with_default(
                settings.default_prompt_name, settings.default_prompt
            )
        except InvalidInput as exc:
            raise SettingsError(f"model {name or setup.model.id}: {exc.message}") from None
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
            name=name,
            sharing=setup.plan,
            batch_per_request=batch_per_request,
            tune_memory=True,
            slots=slots,
            prompts=prompts,
            pooling=pooling_mode(setup.model.path),
            head=score_head(setup.model.path)
            if model_kind(setup.model.path) == "cross-encoder"
            else None,
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

    @property
    def name(self) -> str:
        """The name this engine's model is served under."""
        return self._name

    def _time(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()

    def _others_backlog(self) -> list[float]:
        """Seconds of work queued at the other models sharing this one's slots."""
        assert self._slots is not None
        return self._slots.backlogs(excluding=self._name)

    @property
    def prompts(self) -> ModelPrompts:
        """The model's named prompts and the default one."""
        return self._prompts

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every name the model answers to: its id first (known before it loads)."""
        return self._model_names

    @property
    def compute_slots(self) -> ComputeSlots | None:
        """The compute slots this engine's batches hold while they run."""
        return self._slots

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
        if (recovering := self._scheduler.recovering_reason) is not None:
            return recovering
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
            pooling="splade" if backend.kind == "sparse" else self._pooling,
            kind=backend.kind,
            score_head=self._head
            if self._head or backend.kind != "cross-encoder"
            else ScoreHead(
                tuple(f"LABEL_{i}" for i in range(backend.dimensions)),
                "sigmoid" if backend.dimensions == 1 else "identity",
            ),
        )

    async def start(self) -> None:
        """Load the model on its inference thread and warm it up."""
        if self._state is not EngineState.CREATED:
            raise RuntimeError(f"cannot start an engine that is {self._state.value}")
        self._state = EngineState.STARTING
        self._loop = asyncio.get_running_loop()
        self._scheduler.start(self._loop)
        if self._slots is not None:
            self._slots.publish_backlog(self._name, self._scheduler.backlog_seconds)
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
        if "score" in self._backend.tasks:
            await self.score([("warm up", "warm up")], truncate=True)
        elif "sparse" in self._backend.tasks:
            await self.embed_sparse(["warm up"], truncate=True)
        else:
            await self.embed(["warm up"], truncate=True, prompt="")
        self._scheduler.start_watchdog()

    async def wait_until_serving(self) -> None:
        """Return once the engine is running with every inference thread in place:
        at once normally; after a restart of a dead or hung thread, when it is back."""
        await self._scheduler.serving.wait()

    def begin_drain(self) -> None:
        """Stop admitting new work; admitted work continues. Safe to call repeatedly."""
        if self._state in (EngineState.CREATED, EngineState.STARTING, EngineState.RUNNING):
            self._state = EngineState.DRAINING
            logger.info("draining: %d inputs still admitted", self._admission.admitted)

    async def drain(self) -> None:
        """Stop admitting and wait until admitted work is done (bound it with asyncio.timeout)."""
        self.begin_drain()
        await self._admission.wait_idle()

    async def close(self, grace: float | None = None) -> None:
        """Drain for up to ``grace`` seconds (None: as long as it takes), fail whatever is
        left with ``Unavailable``, and stop the worker."""
        if self._state is EngineState.CLOSED:
            return
        try:
            async with asyncio.timeout(grace):
                await self.drain()
        except TimeoutError:
            self._scheduler.fail_waiting(Unavailable("the engine closed before this request ran"))
        self._state = EngineState.CLOSED
        self._scheduler.stop()
        if self._slots is not None:
            self._slots.publish_backlog(self._name, None)
        await self._offload(self._worker.close, grace)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- embedding -----------------------------------------------------------------

    async def embed(
        self,
        inputs: Sequence[ModelInput],
        *,
        normalize: bool | None = None,
        truncate: bool = False,
        dimensions: int | None = None,
        # A deadline the engine acts on (expired inputs are dropped unrun), which
        # wrapping the call in asyncio.timeout would not do.
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        truncation_direction: TruncationDirection = "right",
        max_tokens: int | None = None,
        task: Task = "embed",
    ) -> Embeddings:
        """Embed ``inputs`` (texts, or lists of the model's token ids); vectors in
        input order.

        ``normalize``: L2-normalise (None: as the model's configuration does).
        ``truncate``: cut over-long inputs instead of raising ``InputTooLong``;
        ``truncation_direction``: cut their end (right) or their beginning (left);
        ``max_tokens``: cut (or refuse) at fewer tokens than the model's maximum.
        ``prompt_name``: one of the model's prompts (``self.prompts``) before each
        text, or ``prompt``, a text of the caller's (neither: the model's default
        prompt, if any); its tokens count toward the maximum length and are never cut.
        ``dimensions``: keep the first N dimensions (Matryoshka-style), normalised
        afterwards if normalising.
        ``timeout``: seconds from now after which the request fails with
        ``DeadlineExceeded`` and its inputs are dropped unrun (None: the request
        scope's deadline, if any). ``priority``: high, normal or low (None: the
        request scope's). ``task``: ``tokens`` gives per-token vectors instead
        (``embed_tokens``).
        """
        backend = self._backend_for(task)
        inputs = validated_inputs(inputs)
        width = validated_dimensions(dimensions, backend.dimensions)
        options = self._prompts.tokenize_options(
            texts=isinstance(inputs[0], str),
            name=prompt_name,
            text=prompt,
            direction=truncation_direction,
            max_tokens=max_tokens,
        )
        return await self._submit(
            task,
            len(inputs),
            lambda: backend.tokenize(inputs, options),
            width=width,
            normalize=backend.normalizes if normalize is None else normalize,
            truncate=truncate,
            max_tokens=max_tokens,
            timeout=timeout,
            priority=priority,
        )

    def _backend_for(self, task: Task) -> Backend:
        """The backend, if the engine is serving and its model can do ``task``."""
        if self._state is not EngineState.RUNNING:
            raise Unavailable(f"the engine is {self._state.value}, not accepting requests")
        if self._scheduler.recovering_reason is not None:
            raise Unavailable(f"the model is restarting ({self.unhealthy_reason}); retry shortly")
        backend = self._require_backend()
        if task in backend.tasks:
            return backend
        if task == "tokens" and backend.kind == "embedding":
            raise NotThisTask(
                f"per-token vectors need the torch backend; model {self._name} runs on "
                f"{backend.name}/{backend.dtype}, whose graph pools inside "
                "(serve it with --backend torch)"
            )
        raise NotThisTask(
            f"model {self._name} is {what_it_does(backend.kind)}; "  # type: ignore[arg-type]
            f"it cannot {_TASK_WORDS[task]}"
        )

    async def _submit(
        self,
        task: Task,
        size: int,
        tokenize: Callable[[], list[TokenizedInput]],
        *,
        width: int,
        normalize: bool,
        truncate: bool,
        max_tokens: int | None,
        timeout: float | None,  # noqa: ASYNC109
        priority: Priority | None,
    ) -> Embeddings:
        """Admit ``size`` inputs of ``task``, tokenise them off the loop, queue them,
        and wait for their rows."""
        backend = self._require_backend()
        scope = current_scope()
        if priority is None:
            priority = scope.priority if scope else "normal"
        elif priority not in PRIORITIES:
            raise InvalidInput(f"priority must be one of {', '.join(PRIORITIES)}", param="priority")
        deadline = scope.deadline if scope else None
        if timeout is not None:
            if timeout <= 0:
                raise InvalidInput("timeout must be positive", param="timeout")
            assert self._loop is not None
            deadline = self._loop.time() + timeout
        request = self._admit(size, backend, width, normalize, deadline, priority, task)
        try:
            assert self._loop is not None
            started = self._loop.time()
            try:
                with tracing.span("embedloom.tokenize", inputs=size):
                    tokenized = await self._offload(tokenize)
            except (TypeError, ValueError, UnicodeError) as exc:
                raise InvalidInput(f"input could not be tokenized: {exc}", param="input") from exc
            tokenize_seconds = self._loop.time() - started
            for index, item in enumerate(tokenized):
                if item.truncated and not truncate:
                    limit = min(max_tokens or backend.max_input_tokens, backend.max_input_tokens)
                    raise InputTooLong(index=index, max_tokens=limit)
            if not request.future.done():  # it may have expired while tokenising
                self._scheduler.enqueue(request, tokenized)
            result = await request.future
            return dataclasses.replace(result, tokenize_seconds=tokenize_seconds)
        except BaseException as exc:
            self._scheduler.abandon(request, exc)
            raise

    def admission_limit(self, priority: Priority = "normal") -> int:
        """How many inputs may be admitted in all when a request of ``priority`` arrives
        (the bound for high; less for normal and low, so a flood of those always
        leaves room for high)."""
        return self._admission.limit(priority)

    def _admit(
        self,
        size: int,
        backend: Backend,
        width: int,
        normalize: bool,
        deadline: float | None,
        priority: Priority,
        task: Task = "embed",
    ) -> Request:
        assert self._loop is not None
        scope = current_scope()
        tenant, weight = (scope.tenant, scope.tenant_weight) if scope else (DEFAULT_TENANT, 1.0)
        wait = max_wait = None
        if self._settings.admission == "wait":
            max_wait = self._settings.max_queue_wait
            if deadline is not None:
                max_wait = min(max_wait, deadline - self._loop.time())
            wait = self._scheduler.predicted_wait(size, tenant, weight, PRIORITIES.index(priority))
        try:
            permit = self._admission.acquire(size, priority, wait=wait, max_wait=max_wait)
        except Overloaded:
            self._scheduler.count_refused(tenant)
            raise
        request = Request(
            self._loop.create_future(),
            size,
            backend.dimensions,
            width,
            normalize,
            scope.request_id if scope else None,
            deadline,
            priority,
            permit,
            task,
            tenant,
            weight,
        )
        request.admitted_at = self._loop.time()
        request.span = tracing.current_span_context()
        self._scheduler.track(request, size)
        logger.debug(
            "admitted %d inputs at %s priority (%d admitted in all)",
            size,
            priority,
            self._admission.admitted,
            extra={"priority": priority},
        )
        return request

    def _require_backend(self) -> Backend:
        if self._backend is None:
            raise Unavailable("the engine has not started")
        return self._backend

    # -- observation ---------------------------------------------------------------

    def statistics(self) -> EngineStatistics:
        admission = self._admission.statistics()
        return EngineStatistics(
            state=self._state.value,
            admitted_inputs=admission.admitted_inputs,
            max_queued_inputs=admission.max_inputs,
            requests_rejected=admission.requests_rejected,
            worker=self._worker.statistics(),
            **self._scheduler.snapshot(),
        )

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<Engine {self._model_id} state={stats.state} queued={stats.queued_inputs} "
            f"admitted={stats.admitted_inputs}/{stats.max_queued_inputs} "
            f"running_batches={stats.running_batches}>"
        )
