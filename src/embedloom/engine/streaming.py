"""A long list through the engine a few chunks at a time (``Engine.embed_stream``).

Each chunk is an ordinary ``embed`` call — admitted, batched and expired like a
request — and at most ``in_flight`` of them are admitted at once, so a huge list
holds a few batches of queue and results at a time and other requests
interleave with it. Only ``embed`` is needed: the stream knows nothing else of
the engine.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from embedloom.backends.base import ModelInput
from embedloom.engine.api import Embeddings
from embedloom.errors import InputTooLong

__all__ = ["chunked_stream"]


async def chunked_stream(
    embed: Callable[..., Awaitable[Embeddings]],
    inputs: list[ModelInput],
    *,
    chunk: int,
    in_flight: int,
    on_unsent: Callable[[int], None],
    **options: Any,
) -> AsyncGenerator[tuple[int, npt.NDArray[np.float32]], None]:
    """``(index, vector)`` for each of ``inputs`` in order, ``embed(part, **options)``
    run ``chunk`` inputs at a time; ``on_unsent`` hears how many inputs were never
    handed to ``embed`` when the stream ends early."""
    if in_flight < 1:
        raise ValueError("in_flight must be at least 1")
    pending: deque[tuple[int, asyncio.Future[Embeddings]]] = deque()
    next_start = 0
    try:
        while next_start < len(inputs) or pending:
            while next_start < len(inputs) and len(pending) < in_flight:
                part: Sequence[ModelInput] = inputs[next_start : next_start + chunk]
                pending.append((next_start, asyncio.ensure_future(embed(part, **options))))
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
        on_unsent(len(inputs) - next_start)
        for _, task in pending:
            task.cancel()
        await asyncio.gather(*(task for _, task in pending), return_exceptions=True)
