"""An ordered, bounded parallel map: the building block of the batch job.

The failure it exists to prevent: a parallel map that keeps starting new work
while earlier results wait to be consumed (rayon's work stealing inside a
nested pool did this, item after item holding 8 MB, until tens of GB were
used). Here the work in flight is bounded by construction:

- at most ``max_in_flight`` chunks exist between reading and writing — being
  computed, done and waiting, or being handed to the consumer; the source is
  read only when a chunk's slot is free;
- results come out in input order;
- an exception in any chunk stops the reading and is raised to the consumer
  (with its traceback); chunks not started are cancelled;
- closing the consumer (or an exception in it) cancels what has not started and
  waits for what has, so no thread outlives the iteration.

Chunks have a floor (``min_chunk_size``): splitting work finer than the
per-chunk overhead (one model call, one write) makes that overhead dominate.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import TypeVar

from embedloom.offload import new_thread_pool

__all__ = ["bounded_map"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(
    fn: Callable[[list[T]], Sequence[R]],
    items: Iterable[T],
    *,
    workers: int = 2,
    max_in_flight: int = 4,
    chunk_size: int = 256,
    min_chunk_size: int = 1,
) -> Iterator[R]:
    """``fn`` over ``items`` a chunk at a time on ``workers`` threads; its results,
    one per item, in input order.

    ``fn`` takes a list of items (a chunk) and returns one result per item.
    ``chunk_size`` below ``min_chunk_size`` is raised to it.
    """
    if workers < 1 or max_in_flight < 1:
        raise ValueError("workers and max_in_flight must be at least 1")
    if chunk_size < min_chunk_size:
        logger.info("chunk size %d raised to its floor of %d", chunk_size, min_chunk_size)
        chunk_size = min_chunk_size
    chunk_size = max(1, chunk_size)
    source = iter(items)
    pending: deque[Future[list[R]]] = deque()
    pool = new_thread_pool(workers, name="embedloom-map")
    try:
        while True:
            # Room for a chunk only while fewer than max_in_flight exist; the one
            # being consumed still counts (it was popped but not yet consumed).
            while len(pending) < max_in_flight:
                chunk = list(itertools.islice(source, chunk_size))
                if not chunk:
                    break
                pending.append(pool.submit(_apply, fn, chunk))
            if not pending:
                return
            results = pending.popleft().result()
            # While these are consumed, at most max_in_flight - 1 others exist.
            yield from results
            del results
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _apply(fn: Callable[[list[T]], Sequence[R]], chunk: list[T]) -> list[R]:
    results = list(fn(chunk))
    if len(results) != len(chunk):
        raise ValueError(
            f"the mapped function returned {len(results)} results for {len(chunk)} items"
        )
    return results
