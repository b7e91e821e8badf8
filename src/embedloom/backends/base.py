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
    "BatchOutputs",
    "ModelInput",
    "Row",
    "SparseVector",
    "Task",
    "TextPair",
    "TokenPiece",
    "TokenizeOptions",
    "TokenizedInput",
]

ModelInput = str | Sequence[int]
"""What a client may send to embed: a text, or the model's own token ids."""

TextPair = tuple[str, str]
"""A query and a document, which a cross-encoder reads together."""

Task = Literal["embed", "tokens", "score", "sparse"]
"""What a batch asks of the model: pooled vectors (``embed``); each input's
per-token vectors, unpooled (``tokens``, TEI's ``/embed_all``); a cross-encoder's
raw scores of text pairs (``score``); a sparse encoder's vectors (``sparse``)."""


@dataclass(frozen=True, slots=True)
class SparseVector:
    """The non-zero entries of one sparse (vocabulary-wide) vector, by ascending index."""

    indices: npt.NDArray[np.int32]
    values: npt.NDArray[np.float32]


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

    def tokenize_pairs(
        self, pairs: Sequence[TextPair], options: TokenizeOptions = PLAIN
    ) -> list[TokenizedInput]:
        """Query–document pairs as a cross-encoder reads them, cut to
        ``max_input_tokens`` from the longer of the two first, as the tokenizer's
        ``longest_first`` does; ``options.max_tokens`` cuts each document first."""
        ...

    def pieces(self, text: str, *, prompt: str = "", special: bool = True) -> list[TokenPiece]:
        """The tokens of ``prompt + text``, uncut, with their places in it."""
        ...

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """The text of token ids."""
        ...

    @property
    def kind(self) -> str:
        """What kind of model it runs (``tasks.ModelKind``): embedding, cross-encoder
        or sparse."""
        ...

    @property
    def tasks(self) -> tuple[Task, ...]:
        """The tasks this backend can run (those of its kind of model it supports)."""
        ...

    def embed(self, batch: Sequence[TokenizedInput]) -> npt.NDArray[np.float32]:
        """Pooled, not yet normalised vectors, shape ``(len(batch), dimensions)``."""
        ...

    def embed_tokens(self, batch: Sequence[TokenizedInput]) -> list[npt.NDArray[np.float32]]:
        """Each input's token vectors before pooling, shape ``(n_tokens, hidden)``
        (only if ``tokens`` is among ``tasks``)."""
        ...

    def score(self, batch: Sequence[TokenizedInput]) -> npt.NDArray[np.float32]:
        """A cross-encoder's raw scores (before its activation), shape
        ``(len(batch), dimensions)`` (only if ``score`` is among ``tasks``)."""
        ...

    def embed_sparse(self, batch: Sequence[TokenizedInput]) -> list[SparseVector]:
        """A sparse encoder's vectors, ``dimensions`` (its vocabulary) wide (only if
        ``sparse`` is among ``tasks``)."""
        ...


BackendFactory = Callable[[], Backend]

Row = npt.NDArray[np.float32] | SparseVector
"""One input's answer: a row of its task's width (a pooled vector, a pair's
scores), or a ragged task's own shape (token vectors, a sparse vector)."""

BatchOutputs = npt.NDArray[np.float32] | list[Row]
"""A batch's answers in input order: one array of rows, or a list of ragged ones."""
