"""The Backend protocol: what the engine needs from a model, and nothing more."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "PLAIN",
    "Backend",
    "BackendFactory",
    "ModelInput",
    "Task",
    "TokenPiece",
    "TokenizeOptions",
    "TokenizedInput",
]

ModelInput = str | Sequence[int]
"""What a client may send to embed: a text, or the model's own token ids."""

Task = Literal["embed", "tokens"]
"""What a batch asks of the model: pooled vectors (``embed``), or each input's
per-token vectors, unpooled (``tokens``, TEI's ``/embed_all``)."""


@dataclass(frozen=True, slots=True)
class TokenizeOptions:
    """How texts become tokens: ``prompt`` goes before each text and is never cut;
    ``left`` cuts an over-long input's beginning (after the prompt) instead of its end;
    ``max_tokens`` cuts below the model's own maximum (Cohere's ``max_tokens``)."""

    prompt: str = ""
    left: bool = False
    max_tokens: int | None = None


PLAIN = TokenizeOptions()


@dataclass(frozen=True, slots=True)
class TokenPiece:
    """One token as TEI's ``/tokenize`` shows it: where it lies in the text (None for
    a special token, whose ``text`` is the token itself)."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


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

    @property
    def vocab_size(self) -> int:
        """Token ids run from 0 to this, exclusive."""
        ...

    def tokenize(
        self, inputs: Sequence[ModelInput], options: TokenizeOptions = PLAIN
    ) -> list[TokenizedInput]:
        """Texts (with ``options``' prompt) or token ids as the model takes them, each
        cut to ``max_input_tokens`` (``TextEncoder.tokenize``)."""
        ...

    def pieces(self, text: str, *, prompt: str = "", special: bool = True) -> list[TokenPiece]:
        """The tokens of ``prompt + text``, uncut, with their places in it."""
        ...

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """The text of token ids."""
        ...

    @property
    def tasks(self) -> tuple[Task, ...]:
        """The tasks this backend can run (``embed`` always)."""
        ...

    def embed(self, batch: Sequence[TokenizedInput]) -> npt.NDArray[np.float32]:
        """Pooled, not yet normalised vectors, shape ``(len(batch), dimensions)``."""
        ...

    def embed_tokens(self, batch: Sequence[TokenizedInput]) -> list[npt.NDArray[np.float32]]:
        """Each input's token vectors before pooling, shape ``(n_tokens, hidden)``
        (only if ``tokens`` is among ``tasks``)."""
        ...


BackendFactory = Callable[[], Backend]
