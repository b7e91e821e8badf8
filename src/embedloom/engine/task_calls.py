"""The engine's calls for tasks besides ``embed``: a cross-encoder's pair scores, a
sparse encoder's vectors, per-token vectors, tokenize/decode, and the chunked
stream. Each is a thin front to ``Engine.embed`` or ``Engine._submit``, so every
task goes through the same admission, batcher, deadlines and compute slots."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt

from embedloom.backends.base import (
    Backend,
    ModelInput,
    Task,
    TextPair,
    TokenizedInput,
    TokenizeOptions,
    TokenPiece,
)
from embedloom.engine.api import Embeddings, Offload
from embedloom.engine.streaming import chunked_stream
from embedloom.engine.work import validated_inputs, validated_pairs
from embedloom.errors import InvalidInput
from embedloom.prompts import ModelPrompts
from embedloom.scope import Priority

if TYPE_CHECKING:
    from embedloom.config import Settings
    from embedloom.engine.scheduler import Scheduler

__all__ = ["TaskCalls"]

TruncationDirection = Literal["right", "left"]


class _Engine(Protocol):
    """What these calls use of the engine they are mixed into."""

    _offload: Offload
    _prompts: ModelPrompts
    _settings: Settings
    _scheduler: Scheduler

    async def embed(
        self,
        inputs: Sequence[ModelInput],
        *,
        normalize: bool | None = ...,
        truncate: bool = ...,
        dimensions: int | None = ...,
        timeout: float | None = ...,  # noqa: ASYNC109
        priority: Priority | None = ...,
        prompt_name: str | None = ...,
        prompt: str | None = ...,
        truncation_direction: TruncationDirection = ...,
        max_tokens: int | None = ...,
        task: Task = ...,
    ) -> Embeddings: ...

    def _backend_for(self, task: Task) -> Backend: ...

    def _require_backend(self) -> Backend: ...

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
    ) -> Embeddings: ...


class TaskCalls:
    """Mixed into ``Engine``."""

    async def score(
        self: _Engine,
        inputs: Sequence[str | TextPair],
        *,
        truncate: bool = False,
        truncation_direction: TruncationDirection = "right",
        max_document_tokens: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority | None = None,
    ) -> Embeddings:
        """A cross-encoder's raw scores of texts or (query, document) pairs, one row each
        (its labels wide) in ``vectors``, before the activation (``tasks.activate``
        with ``model_info.score_head``). Each text or pair is one input to the
        batcher and to admission; an over-long one is cut as ``CrossEncoder`` cuts
        it (of a pair, the longer text first), or refused unless ``truncate``;
        ``max_document_tokens`` cuts each document first. ``NotThisTask`` unless
        the model is a cross-encoder. The other options are ``embed``'s."""
        backend = self._backend_for("score")
        items = validated_pairs(inputs)
        options = TokenizeOptions(
            left=truncation_direction == "left", max_tokens=max_document_tokens
        )

        def tokenize() -> list[TokenizedInput]:
            # One tokenizer call for the texts and one for the pairs, not one per item.
            texts = [i for i, item in enumerate(items) if isinstance(item, str)]
            pairs = [i for i, item in enumerate(items) if not isinstance(item, str)]
            out: list[TokenizedInput | None] = [None] * len(items)
            if texts:
                single = replace(options, max_tokens=None)
                done = backend.tokenize([cast(str, items[i]) for i in texts], single)
                for i, tokens in zip(texts, done, strict=True):
                    out[i] = tokens
            if pairs:
                done = backend.tokenize_pairs([cast(TextPair, items[i]) for i in pairs], options)
                for i, tokens in zip(pairs, done, strict=True):
                    out[i] = tokens
            return cast(list[TokenizedInput], out)

        return await self._submit(
            "score",
            len(items),
            tokenize,
            width=backend.dimensions,
            normalize=False,
            truncate=truncate,
            max_tokens=None,
            timeout=timeout,
            priority=priority,
        )

    async def embed_sparse(
        self: _Engine,
        inputs: Sequence[ModelInput],
        *,
        truncate: bool = False,
        truncation_direction: TruncationDirection = "right",
        prompt_name: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority | None = None,
    ) -> Embeddings:
        """A sparse encoder's vectors (``sparse``: the non-zero entries of each, as
        ``SparseEncoder.encode`` gives them). ``NotThisTask`` unless the model is a
        sparse encoder; the options are ``embed``'s."""
        return await self.embed(
            inputs,
            truncate=truncate,
            truncation_direction=truncation_direction,
            prompt_name=prompt_name,
            timeout=timeout,
            priority=priority,
            task="sparse",
        )

    async def embed_tokens(
        self: _Engine,
        inputs: Sequence[ModelInput],
        *,
        truncate: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority | None = None,
        prompt_name: str | None = None,
        truncation_direction: TruncationDirection = "right",
    ) -> Embeddings:
        """Each input's token vectors before pooling (TEI's ``/embed_all``), in
        ``token_vectors``: one ``(n_tokens, hidden)`` array per input, special and
        prompt tokens included. Batched, admitted and timed like ``embed``;
        ``NotThisTask`` when the backend's graph pools inside (ONNX)."""
        return await self.embed(
            inputs,
            truncate=truncate,
            timeout=timeout,
            priority=priority,
            prompt_name=prompt_name,
            truncation_direction=truncation_direction,
            task="tokens",
        )

    async def tokens(
        self: _Engine,
        texts: Sequence[str],
        *,
        prompt_name: str | None = None,
        special: bool = True,
    ) -> list[list[TokenPiece]]:
        """Each text's tokens as the model sees them, uncut, with their places in the
        text (TEI's ``/tokenize``); the prompt as ``embed`` would use it."""
        backend = self._require_backend()
        checked = [text for text in validated_inputs(texts) if isinstance(text, str)]
        if len(checked) != len(texts):
            raise InvalidInput("inputs must be strings", param="inputs")
        prompt = self._prompts.text_for(prompt_name)
        return await self._offload(
            lambda: [backend.pieces(text, prompt=prompt, special=special) for text in checked]
        )

    async def decode(
        self: _Engine, ids: Sequence[Sequence[int]], *, skip_special: bool = True
    ) -> list[str]:
        """The text of each list of token ids (TEI's ``/decode``)."""
        backend = self._require_backend()
        return await self._offload(
            lambda: [backend.decode(row, skip_special=skip_special) for row in ids]
        )

    def embed_stream(
        self: _Engine,
        texts: Sequence[ModelInput],
        *,
        normalize: bool | None = None,
        truncate: bool = False,
        dimensions: int | None = None,
        priority: Priority | None = None,
        chunk_size: int | None = None,
        in_flight: int = 3,
        prompt_name: str | None = None,
        truncation_direction: TruncationDirection = "right",
    ) -> AsyncGenerator[tuple[int, npt.NDArray[np.float32]], None]:
        """Embed a long list, yielding ``(index, vector)`` in input order as they are done.

        The list goes through the engine ``chunk_size`` inputs at a time (default:
        one batch), at most ``in_flight`` chunks admitted at once, so a huge
        request holds a few batches of queue and results at a time, and other
        requests interleave with it. Each chunk is admitted like a request: under
        overload the stream fails with ``Overloaded``. Leaving the iteration (or
        cancelling) drops the chunks not yet run, counted in ``inputs_dropped``.
        Deadlines come from the request scope; the other options are ``embed``'s
        (``streaming.py``).
        """
        return chunked_stream(
            self.embed,
            validated_inputs(texts),
            chunk=chunk_size or self._settings.max_batch_size,
            in_flight=in_flight,
            on_unsent=self._scheduler.count_dropped,
            normalize=normalize,
            truncate=truncate,
            dimensions=dimensions,
            priority=priority,
            prompt_name=prompt_name,
            truncation_direction=truncation_direction,
        )
