"""The engine's public types: its lifecycle states, what ``embed`` returns, what it
says about its model, and how it runs blocking calls off the loop."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ParamSpec, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from embedloom.backends.base import SparseVector
from embedloom.tasks import ScoreHead
from embedloom.variants.gate import Gate

__all__ = ["Embeddings", "EngineState", "ModelInfo", "Offload"]

P = ParamSpec("P")
T = TypeVar("T")


class Offload(Protocol):
    """How the engine runs blocking calls off the loop (``run_in_thread`` unless a test
    injects something more deterministic)."""

    def __call__(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> Awaitable[T]: ...


class EngineState(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Embeddings:
    """The answer to one ``embed`` call: one row per input, in input order, and where
    its time went (TEI's timing headers): tokenising, waiting for its first batch,
    and from then until its last row arrived."""

    vectors: npt.NDArray[np.float32]
    prompt_tokens: int
    tokenize_seconds: float = 0.0
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0
    # ``Engine.embed_tokens``: each input's token vectors, unpooled (``vectors``
    # is then empty).
    token_vectors: list[npt.NDArray[np.float32]] | None = None
    # ``Engine.embed_sparse``: each input's sparse vector (``vectors`` is then empty).
    sparse: list[SparseVector] | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model_id: str
    names: tuple[str, ...]
    backend: str
    dtype: str
    dimensions: int
    max_input_tokens: int
    normalizes: bool
    # How the backend and dtype were chosen, and the accuracy gate's figures
    # (None for the fp32 reference itself, or an engine given a backend directly).
    choice_reason: str | None = None
    gate: Gate | None = None
    pooling: str | None = None  # TEI's name for it: mean, cls, …
    kind: str = "embedding"  # tasks.ModelKind
    score_head: ScoreHead | None = None  # a cross-encoder's labels and activation
