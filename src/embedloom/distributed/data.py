"""Batch embedding on Ray Data: the same engine, one per actor, over a distributed dataset.

``embed_dataset(ds, column="text")`` adds an ``embedding`` column with
``Dataset.map_batches`` and a pool of actors, each holding one ``Embedder``
(model loaded once per actor, from the model store). Two pitfalls of small
clusters are handled here rather than left to the user:

- An actor pool that claims every CPU leaves none for the read tasks that feed
  it, and the job hangs (ray-project/ray#44687). Actors ask for a fraction of a
  CPU by default (``cpus_per_actor``), and the pool never asks for more than the
  cluster has minus one CPU's worth for reading.
- Ray Data's memory budget is soft: a batch is bounded here (``batch_size``
  rows) and each actor runs one batch at a time, so the rows in flight are at
  most actors × (1 running + Ray's small prefetch) batches.

Each actor's engine gets a thread budget from the CPUs Ray reserved for it
(at least one), so actors sharing a node do not oversubscribe it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from embedloom.config import Settings

if TYPE_CHECKING:
    import ray.data

__all__ = ["EmbedBatch", "embed_dataset", "threads_for_cpus"]

DEFAULT_BATCH_SIZE = 256


def threads_for_cpus(cpus: float) -> int:
    """The compute threads an actor given ``cpus`` CPUs may run (whole, at least one)."""
    return max(1, math.floor(cpus))


class EmbedBatch:
    """The actor class of the pool: one engine, kept for the actor's life."""

    def __init__(self, settings: Settings, column: str, output_column: str, cpus: float) -> None:
        from embedloom.embedder import Embedder

        # One inference thread owning the actor's whole share: batches come one at a
        # time from Ray, so replicas inside an actor would sit idle.
        threads = threads_for_cpus(cpus)
        self._embedder = Embedder(
            settings=settings.replace(threads=threads, sharing="dedicated", replicas=0),
            batch_per_request=True,
        )
        self._column = column
        self._output_column = output_column

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        texts = [str(text) for text in batch[self._column]]
        vectors = self._embedder.embed(texts) if texts else np.zeros((0, 0), np.float32)
        return {**batch, self._output_column: vectors}


def embed_dataset(
    ds: ray.data.Dataset,
    *,
    column: str = "text",
    model: str | None = None,
    output_column: str = "embedding",
    actors: int = 2,
    cpus_per_actor: float = 0.5,
    batch_size: int = DEFAULT_BATCH_SIZE,
    settings: Settings | None = None,
) -> ray.data.Dataset:
    """``ds`` with ``output_column`` (float32 vectors) added, every other column kept,
    rows in their input order.

    ``actors``: the pool's size; ``cpus_per_actor``: CPUs each actor reserves (its
    engine's thread budget is the whole part of it, at least one); ``batch_size``:
    rows per batch handed to an actor, which bounds memory in flight.
    """
    import ray

    if actors < 1 or cpus_per_actor <= 0 or batch_size < 1:
        raise ValueError("actors, cpus_per_actor and batch_size must be positive")
    settings = settings or Settings.from_environment()
    if model is not None:
        settings = settings.replace(model=model)
    cluster_cpus = float(ray.cluster_resources().get("CPU", 0))  # type: ignore[no-untyped-call]
    if cluster_cpus and actors * cpus_per_actor > cluster_cpus - 1:
        raise ValueError(
            f"{actors} actors × {cpus_per_actor} CPUs would leave the read tasks less than "
            f"one of the cluster's {cluster_cpus:g} CPUs, and the job can hang "
            "(ray-project/ray#44687); lower cpus_per_actor or actors"
        )
    if column not in ds.columns():
        raise ValueError(f"no column {column!r} (columns: {', '.join(ds.columns())})")
    # Rows come back in input order, as from Embedder().embed over the same list.
    ds.context.execution_options.preserve_order = True
    return ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={
            "settings": settings,
            "column": column,
            "output_column": output_column,
            "cpus": cpus_per_actor,
        },
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=actors,
        num_cpus=cpus_per_actor,
    )
