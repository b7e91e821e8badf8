"""The Backend protocol: what the engine needs from a model, and nothing more."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["Backend", "BackendFactory", "TokenizedInput"]


@dataclass(frozen=True, slots=True)
class TokenizedInput:
    """One text after tokenisation, special tokens included, already cut to the model's
    maximum; ``truncated`` says whether anything was cut off."""

    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...] | None
    truncated: bool

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


@runtime_checkable
class Backend(Protocol):
    """A loaded embedding model.

    ``tokenize`` may be called from any thread at any time; ``embed`` is only
    ever called by the thread that owns the backend (see ``embedloom.sharing``).
    """

    @property
    def name(self) -> str:
        """Short backend name for /info and metrics, e.g. 'torch'."""
        ...

    @property
    def dtype(self) -> str:
        """The arithmetic the model runs in: 'fp32', 'bf16', 'fp16' or 'int8'."""
        ...

    @property
    def max_input_tokens(self) -> int:
        """Longest input, in tokens, the model takes."""
        ...

    @property
    def dimensions(self) -> int:
        """Length of the vectors ``embed`` returns."""
        ...

    @property
    def normalizes(self) -> bool:
        """Whether the model's own configuration L2-normalises its output."""
        ...

    def compute_threads(self) -> int:
        """Intra-op threads the model uses when called from the current thread, as the
        runtime reports it (not as configured)."""
        ...

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedInput]:
        """Tokenise texts, truncating each to ``max_input_tokens``."""
        ...

    def embed(self, batch: Sequence[TokenizedInput]) -> npt.NDArray[np.float32]:
        """Pooled, not yet normalised vectors, shape ``(len(batch), dimensions)``."""
        ...


BackendFactory = Callable[[], Backend]
