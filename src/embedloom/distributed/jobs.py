"""The command-line faces of the Ray integration: ``embed --ray`` and ``serve --ray``."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedloom.config import Settings
from embedloom.distributed.data import embed_dataset
from embedloom.distributed.serving import serve_app
from embedloom.errors import InvalidInput

__all__ = ["run_ray_job", "serve_on_ray"]

logger = logging.getLogger(__name__)


def _connect(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        # None: the cluster in RAY_ADDRESS, else a new local one.
        ray.init(address=address, log_to_driver=False)


def run_ray_job(
    source: str | Path,
    output: Path,
    *,
    address: str | None,
    column: str,
    actors: int,
    cpus_per_actor: float,
    overwrite: bool,
    settings: Settings,
) -> int:
    """Parquet in (a file or a directory); out, a directory of Parquet parts
    (``part-000000.parquet``, …) holding ``row`` (the input position), every input
    column and ``embedding`` (fixed-size lists of float32, as the single-machine
    job writes), in input order. Returns the rows written.

    Actors embed in parallel across the cluster; the driver receives the batches
    in order and writes them, so the parts' names and the ``row`` column give
    the order (Ray's own writer names files by task, not by position). The
    output appears whole, by one rename, or not at all.
    """
    import ray.data

    source = Path(source)
    if not source.exists():
        raise InvalidInput(f"{source}: no such file or directory")
    if source.suffix != ".parquet" and not source.is_dir():
        raise InvalidInput(
            f"{source}: --ray reads Parquet (a .parquet file or a directory of them)"
        )
    if output.exists() and not overwrite:
        raise InvalidInput(f"{output} exists; pass --overwrite to replace it")
    _connect(address)
    ds = ray.data.read_parquet(str(source))
    embedded = embed_dataset(
        ds, column=column, actors=actors, cpus_per_actor=cpus_per_actor, settings=settings
    )
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    rows = 0
    try:
        for part, batch in enumerate(embedded.iter_batches(batch_size=None, batch_format="numpy")):
            table = _table(batch, first_row=rows)
            pq.write_table(table, partial / f"part-{part:06d}.parquet")
            rows += table.num_rows
        if output.is_dir():
            shutil.rmtree(output)
        elif output.exists():
            output.unlink()
        os.replace(partial, output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info("embedded %d rows into %s with %d actors", rows, output, actors)
    return rows


def _table(batch: dict[str, np.ndarray[Any, Any]], *, first_row: int) -> pa.Table:
    vectors = np.ascontiguousarray(batch["embedding"], dtype=np.float32)
    columns: dict[str, pa.Array] = {
        "row": pa.array(np.arange(first_row, first_row + len(vectors)), type=pa.int64())
    }
    for name, values in batch.items():
        if name not in ("row", "embedding"):
            columns[name] = pa.array(list(values))
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    return pa.table(columns)


def serve_on_ray(
    settings: Settings, *, address: str | None, replicas: int, cpus_per_replica: float
) -> None:
    """Run the embedloom app on Ray Serve at ``settings.host:settings.port`` until
    SIGTERM/SIGINT, then shut the application down."""
    from ray import serve

    _connect(address)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(
        serve_app(replicas=replicas, cpus_per_replica=cpus_per_replica, settings=settings),
        name="embedloom",
    )
    logger.info(
        "serving on http://%s:%d (Ray Serve, %d replica(s))", settings.host, settings.port, replicas
    )
    stop = threading.Event()

    def on_signal(sig: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    stop.wait()
    serve.delete("embedloom")
    serve.shutdown()  # type: ignore[no-untyped-call]
