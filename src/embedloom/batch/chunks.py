"""What the batch jobs (one machine, or Ray) do with a chunk of input rows: stop at
the first bad row or set the bad rows aside, and embed the good ones in order of
length with their rows put back in order."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from embedloom.batch.readers import BatchInputError, Record, Reject
from embedloom.batch.writers import ChunkVectors

__all__ = ["embed_sorted", "reject_line", "stop_at_first_reject", "texts_of"]


def stop_at_first_reject(items: Iterator[Record | Reject]) -> Iterator[Record | Reject]:
    for item in items:
        if isinstance(item, Reject):
            raise BatchInputError(
                f"{item.where}: {item.reason} (pass --on-error skip to write such rows to a "
                "rejects file and go on)"
            )
        yield item


def reject_line(reject: Reject) -> bytes:
    """A bad row as one line of the rejects file (JSON Lines)."""
    line = json.dumps({"row": reject.row, "where": reject.where, "reason": reject.reason})
    return line.encode() + b"\n"


def texts_of(chunk: Sequence[Record | Reject]) -> list[str]:
    return [item.text for item in chunk if isinstance(item, Record)]


def embed_sorted(embed: Callable[[list[str]], ChunkVectors], texts: list[str]) -> ChunkVectors:
    """Embed in order of length (so each batch pads little), rows put back in order."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    vectors = embed([texts[i] for i in order])
    if isinstance(vectors, np.ndarray):
        restored = np.empty_like(vectors)
        restored[order] = vectors
        return restored
    in_order: list[Any] = [None] * len(texts)
    for position, index in enumerate(order):
        in_order[index] = vectors[position]
    return in_order
