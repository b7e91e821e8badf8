"""The units of work inside an engine, all touched on the event loop's thread but
where a docstring says otherwise: a ``Request`` (one ``embed`` call in flight),
its ``QueuedInput``s (one per input, what the batcher orders and cuts), and a
``Job`` (one batch handed to an inference thread, and its way back).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from embedloom.backends.base import (
    Backend,
    BatchOutputs,
    ModelInput,
    Row,
    Task,
    TextPair,
    TokenizedInput,
)
from embedloom.engine.admission import Permit
from embedloom.engine.api import Embeddings
from embedloom.errors import InvalidInput
from embedloom.scope import PRIORITIES, Priority

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

__all__ = [
    "RAGGED_TASKS",
    "Job",
    "QueuedInput",
    "Request",
    "Vectors",
    "finished_vectors",
    "validated_dimensions",
    "validated_inputs",
    "validated_pairs",
]

# The engine's log, whichever of its modules writes.
logger = logging.getLogger("embedloom.engine")

Vectors = npt.NDArray[np.float32]
# Tasks whose answers are ragged: ``Request.rows`` instead of ``Request.raw``.
RAGGED_TASKS: frozenset[Task] = frozenset({"tokens", "sparse"})


class Request:
    """One ``embed`` call in flight. Touched only on the event loop's thread, except
    ``cancelled``, which the worker thread reads (a plain bool, set once)."""

    __slots__ = (
        "admitted_at",
        "cancelled",
        "deadline",
        "dimensions",
        "enqueued",
        "enqueued_at",
        "first_batch_ns",
        "future",
        "normalize",
        "permit",
        "priority_class",
        "queued_ns",
        "raw",
        "request_id",
        "rows",
        "span",
        "started_at",
        "task",
        "tenant",
        "tenant_weight",
        "timer",
        "tokens",
        "unfinished",
        "waiting_since",
    )

    def __init__(
        self,
        future: asyncio.Future[Embeddings],
        size: int,
        model_dimensions: int,
        dimensions: int,
        normalize: bool,
        request_id: str | None,
        deadline: float | None,
        priority: Priority,
        permit: Permit,
        task: Task = "embed",
        tenant: str = "",
        tenant_weight: float = 1.0,
    ) -> None:
        self.future = future
        self.tenant = tenant  # whose fair share it is served from
        self.tenant_weight = tenant_weight
        # Since when it has waited without progress: queued, or its last input taken
        # into a batch (what ageing measures).
        self.waiting_since = 0.0
        self.task: Task = task
        # Tracing only (None when off): the request's span, and when it was queued
        # and when its first batch started, for the queue and inference spans.
        self.span: SpanContext | None = None
        self.queued_ns = 0
        self.first_batch_ns = 0
        self.admitted_at = 0.0
        self.enqueued_at = 0.0  # loop times: queued, and its first batch started
        self.started_at = 0.0
        self.deadline = deadline
        self.priority_class = PRIORITIES.index(priority)
        self.timer: asyncio.TimerHandle | None = None
        # Rows of the task's width, or (a ragged task) each input's own row.
        ragged = task in RAGGED_TASKS
        self.raw = np.empty((0 if ragged else size, model_dimensions), dtype=np.float32)
        self.rows: list[Row | None] = [None] * size if ragged else []
        self.dimensions = dimensions
        self.normalize = normalize
        self.request_id = request_id
        self.unfinished = size  # inputs whose vector has not arrived
        self.permit = permit  # its inputs' share of the admission bound, given back as done
        self.tokens = 0
        self.enqueued = False
        self.cancelled = False


class QueuedInput:
    __slots__ = ("enqueued_at", "index", "request", "tokens")

    def __init__(
        self, request: Request, index: int, tokens: TokenizedInput, enqueued_at: float
    ) -> None:
        self.request = request
        self.index = index
        self.tokens = tokens
        self.enqueued_at = enqueued_at

    @property
    def n_tokens(self) -> int:
        return self.tokens.n_tokens

    @property
    def deadline(self) -> float | None:
        return self.request.deadline

    @property
    def priority_class(self) -> int:
        return self.request.priority_class

    @property
    def waiting_since(self) -> float:
        return self.request.waiting_since

    @property
    def owner(self) -> object:
        return self.request

    @property
    def task(self) -> Task:
        return self.request.task


class Job:
    """A batch handed to the worker. ``take_inputs``/``complete`` run on the worker thread;
    ``complete`` passes the outcome back to the loop."""

    def __init__(
        self,
        batch_id: int,
        items: list[QueuedInput],
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[[Job, BatchOutputs | None, BaseException | None, float], None],
    ) -> None:
        self.batch_id = batch_id
        self.items = items
        self.taken: list[QueuedInput] = []
        self.skipped: list[QueuedInput] = []
        # Loop-side bookkeeping: the outcome arrived, or the engine gave up on the
        # thread running it (a late outcome is then ignored).
        self.finished = False
        self.abandoned = False
        self._loop = loop
        self._on_done = on_done

    def run(self, backend: Backend, inputs: Sequence[TokenizedInput]) -> BatchOutputs:
        """Run the batch's task on ``backend`` (a batch holds one task: ``plan_batch``)."""
        task = self.items[0].task
        if task == "tokens":
            return list(backend.embed_tokens(inputs))
        if task == "score":
            return backend.score(inputs)
        if task == "sparse":
            return list(backend.embed_sparse(inputs))
        return backend.embed(inputs)

    def take_inputs(self) -> Sequence[TokenizedInput]:
        # A waiting batch may hold inputs whose caller left, or whose deadline passed
        # while it waited: those never reach the model.
        # The loop's clock, read from the worker's thread (a plain monotonic read).
        now = self._loop.time()
        self.taken, self.skipped = [], []
        for item in self.items:
            deadline = item.request.deadline
            dropped = item.request.cancelled or (deadline is not None and deadline <= now)
            (self.skipped if dropped else self.taken).append(item)
        return [item.tokens for item in self.taken]

    def span_links(self) -> list[SpanContext]:
        spans = (item.request.span for item in self.taken)
        return list({id(s): s for s in spans if s is not None}.values())

    def request_ids(self) -> tuple[str, ...]:
        ids = (item.request.request_id for item in self.taken)
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    def complete(
        self,
        vectors: BatchOutputs | None,
        error: BaseException | None,
        seconds: float,
    ) -> None:
        try:
            self._loop.call_soon_threadsafe(self._on_done, self, vectors, error, seconds)
        except RuntimeError:
            # The loop is closed: the engine was abandoned without close(); nobody waits.
            logger.warning("batch %d finished after its event loop closed", self.batch_id)


def validated_inputs(inputs: Sequence[ModelInput]) -> list[ModelInput]:
    """``inputs`` as a list — all texts, or all token-id lists — or ``InvalidInput``
    naming what is wrong (ids are checked against the vocabulary when tokenised)."""
    if isinstance(inputs, str) or not isinstance(inputs, Sequence):
        raise InvalidInput("input must be a list of strings", param="input")
    if not inputs:
        raise InvalidInput("input must not be empty", param="input")
    texts = isinstance(inputs[0], str)
    for index, item in enumerate(inputs):
        if isinstance(item, str) != texts:
            raise InvalidInput(
                f"input {index} is {'not a string' if texts else 'a string'}: a request's "
                "inputs are all strings or all token-id lists",
                param="input",
            )
        if not texts and (isinstance(item, bytes) or not isinstance(item, Sequence)):
            raise InvalidInput(f"input {index} is not a list of token ids", param="input")
        if not item:
            kind = "an empty string" if texts else "an empty list of token ids"
            raise InvalidInput(f"input {index} is {kind}", param="input")
    return list(inputs)


def validated_pairs(items: Sequence[str | TextPair]) -> list[str | TextPair]:
    """``items`` as a list of texts or (query, document) pairs of non-empty strings
    (what a cross-encoder scores), or ``InvalidInput`` naming the first that is not."""
    if not isinstance(items, list | tuple) or not items:
        raise InvalidInput(
            "input must be a non-empty list of texts or (query, document) pairs", param="input"
        )
    checked: list[str | TextPair] = []
    for index, item in enumerate(items):
        if isinstance(item, str) and item:
            checked.append(item)
        elif (
            isinstance(item, list | tuple)
            and len(item) == 2
            and all(isinstance(text, str) and text for text in item)
        ):
            checked.append((item[0], item[1]))
        else:
            raise InvalidInput(
                f"input {index} is neither a non-empty text nor a pair of them", param="input"
            )
    return checked


def validated_dimensions(dimensions: int | None, model_dimensions: int) -> int:
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


def finished_vectors(
    raw: npt.NDArray[np.float32], dimensions: int, normalize: bool
) -> npt.NDArray[np.float32]:
    """The model's pooled rows as a request asked for them: its first ``dimensions``,
    L2-normalised if ``normalize``."""
    vectors = raw[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        # Same floor as torch.nn.functional.normalize, so zero vectors stay zero.
        vectors = vectors / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)
