"""``embed --ray``: a batch job across a Ray cluster whose vectors never pass through
the driver.

The driver plans (row counts come back from a task per input file: numbers,
not rows), hands blocks (``blocks.Block``: a file, a row range) to a pool of
actors, and receives one small record per block. Each actor reads its block
with the single-machine job's readers (same row semantics, same bad-row
handling), embeds it with its own engine, and writes it where it runs,
straight to the output location (a local or shared directory, or any
filesystem pyarrow knows by URI: ``s3://``, ``gs://``…) as
``part-NNNNNN.parquet``, NNNNNN being the block's number: first under a
temporary name, then moved into place, so a part that exists is whole.

The output is a Parquet dataset directory: the parts (``row``, ``id`` with
``--id-field``, ``embedding``: the single-machine job's columns) and, with
``--on-error skip``, ``rejects-NNNNNN.jsonl`` beside their part. The plan
(``_embedloom_plan.json``) is written first, the manifest
(``_embedloom_manifest.json``: rows, rejects, parts and the node that wrote
each) last: a directory without the manifest is a job not finished, which
``--resume`` continues, computing only the blocks with no part.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedloom.batch.chunks import embed_sorted, reject_line, stop_at_first_reject, texts_of
from embedloom.batch.readers import (
    Record,
    Reject,
    check_input,
    count_rows,
    input_format,
    read_records,
)
from embedloom.config import Settings
from embedloom.distributed.blocks import (
    MANIFEST,
    PLAN,
    Block,
    fingerprint,
    input_files,
    part_name,
    plan_blocks,
    rejects_name,
)
from embedloom.distributed.data import threads_for_cpus
from embedloom.errors import EmbedloomError, InvalidInput

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

__all__ = ["RayJobOptions", "RayJobSummary", "run_ray_job"]

logger = logging.getLogger(__name__)

# Actors lost (a node gone, a crash) before the job gives up rather than retry on.
_MAX_LOST_ACTORS = 8
# The node that wrote a part, in the part's own Parquet metadata.
_NODE_KEY = b"embedloom.node"


@dataclass(frozen=True, slots=True)
class RayJobOptions:
    source: Path
    output: str  # a directory, or a filesystem URI
    field: str = "text"
    id_field: str | None = None
    column: str | None = None
    on_error: str = "stop"
    chunk_rows: int = 1024
    actors: int = 2
    cpus_per_actor: float = 0.5
    overwrite: bool = False
    resume: bool = False
    quiet: bool = False  # no line per block


@dataclass(frozen=True, slots=True)
class RayJobSummary:
    rows: int
    rejected: int
    parts: int
    parts_written: int  # by this run (the rest were there: --resume)
    nodes: int  # distinct nodes that wrote the parts
    seconds: float
    bytes_to_driver: int  # what the actors sent back, all blocks together

    def line(self) -> str:
        kept = self.parts - self.parts_written
        resumed = f", {kept} kept from the interrupted run" if kept else ""
        rejected = f", {self.rejected} rows rejected" if self.rejected else ""
        return (
            f"embedded {self.rows} rows into {self.parts} parts on {self.nodes} node(s) in "
            f"{self.seconds:.1f} s ({self.bytes_to_driver} bytes of block records back to the "
            f"driver){rejected}{resumed}"
        )


def run_ray_job(options: RayJobOptions, settings: Settings) -> RayJobSummary:
    started = time.perf_counter()
    if options.resume and options.overwrite:
        raise InvalidInput("--resume and --overwrite contradict each other; pass one")
    if options.chunk_rows < settings.max_batch_size:
        raise InvalidInput(f"--chunk-size must be at least one batch ({settings.max_batch_size})")
    files = input_files(options.source)
    filesystem, root = _output_location(options.output)
    plan = fingerprint(
        files,
        field=options.field,
        id_field=options.id_field,
        column=options.column,
        chunk_rows=options.chunk_rows,
        model=settings.model_ref,
        backend=settings.backend,
        dtype=settings.dtype,
    )
    done = _prepare_output(filesystem, root, plan, options)
    readers = {"field": options.field, "id_field": options.id_field, "column": options.column}
    counts = _count_on_cluster(files, readers)
    blocks = plan_blocks(list(zip(map(str, files), counts, strict=True)), options.chunk_rows)
    todo = [block for block in blocks if block.index not in done]
    logger.info(
        "%d rows in %d blocks of %d; %d to embed with %d actors",
        sum(counts),
        len(blocks),
        options.chunk_rows,
        len(todo),
        options.actors,
    )
    returned = 0
    if todo:
        returned = _embed_blocks(todo, options, settings, readers, root)
    manifest = _publish(filesystem, root, blocks, plan)
    return RayJobSummary(
        rows=manifest["rows"],
        rejected=manifest["rejected"],
        parts=len(blocks),
        parts_written=len(todo),
        nodes=len({part["node"] for part in manifest["parts"]}),
        seconds=time.perf_counter() - started,
        bytes_to_driver=returned,
    )


def _output_location(output: str) -> tuple[FileSystem, str]:
    from pyarrow.fs import FileSystem, LocalFileSystem

    if "://" in output:
        return FileSystem.from_uri(output)  # type: ignore[no-any-return]
    return LocalFileSystem(), str(Path(output).resolve())


def _prepare_output(
    filesystem: FileSystem, root: str, plan: dict[str, Any], options: RayJobOptions
) -> set[int]:
    """Start fresh (or replace, with --overwrite), or find the blocks a resumed run
    has already written; write the plan. The numbers of the blocks done."""
    from pyarrow.fs import FileSelector, FileType

    kind = filesystem.get_file_info(root).type
    if kind == FileType.File:
        raise InvalidInput(f"{options.output} is a file; --ray writes a directory of parts")
    exists = kind == FileType.Directory
    if exists and options.resume:
        try:
            with filesystem.open_input_stream(f"{root}/{PLAN}") as stream:
                saved = json.loads(stream.read())
        except FileNotFoundError:
            raise InvalidInput(
                f"{options.output} holds no plan of an embedloom --ray job to resume"
            ) from None
        if saved != plan:
            raise InvalidInput(
                f"{options.output} belongs to a run with other input or options; pass "
                "--overwrite to start again"
            )
        names = {
            info.base_name
            for info in filesystem.get_file_info(FileSelector(root))
            if info.type == FileType.File
        }
        done = {int(name[5:11]) for name in names if name.startswith("part-")}
        logger.info("resuming: %d parts already written", len(done))
        return done
    if exists and not options.overwrite:
        hint = "--resume to continue it, or " if not _has(filesystem, root, MANIFEST) else ""
        raise InvalidInput(f"{options.output} exists; pass {hint}--overwrite to replace it")
    if exists:
        filesystem.delete_dir(root)
    filesystem.create_dir(root, recursive=True)
    _write_json(filesystem, f"{root}/{PLAN}", plan)
    return set()


def _embed_blocks(
    todo: list[Block],
    options: RayJobOptions,
    settings: Settings,
    readers: dict[str, Any],
    root: str,
) -> int:
    """Run the blocks on a pool of actors spread over the nodes; the bytes of the
    records they sent back.

    An actor lost with its node (or to any crash) is replaced by a new one, which
    Ray places on a node still alive, and its block goes back in the queue: a
    part is written whole or not at all, so a block run twice is written once.
    A bad row is not such a loss: it stops the job (``--on-error stop``).
    """
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    writer = ray.remote(BlockWriter).options(
        num_cpus=options.cpus_per_actor, scheduling_strategy="SPREAD"
    )
    location = options.output if "://" in options.output else root

    def new_actor() -> Any:
        return writer.remote(settings, options.cpus_per_actor, location, readers, options.on_error)

    idle: list[Any] = [new_actor() for _ in range(min(options.actors, len(todo)))]
    pending = collections.deque(todo)
    running: dict[Any, tuple[Any, Block]] = {}
    losses = 0
    returned = 0
    written = 0
    try:
        while pending or running:
            while idle and pending:
                actor, block = idle.pop(), pending.popleft()
                running[actor.write.remote(block)] = (actor, block)
            [ready], _ = ray.wait(list(running), num_returns=1)
            actor, block = running.pop(ready)
            try:
                record = ray.get(ready)
            except RayTaskError as exc:
                # A bad row (--on-error stop) or an unreadable file: the cause's own
                # one-line message, not Ray's remote traceback around it.
                if isinstance(exc.cause, EmbedloomError):
                    raise exc.cause from None
                raise
            except RayActorError as exc:
                losses += 1
                if losses > _MAX_LOST_ACTORS:
                    raise
                logger.warning(
                    "block %d: its actor was lost (%s); running it again on a new actor",
                    block.index,
                    type(exc).__name__,
                )
                ray.kill(actor, no_restart=True)
                idle.append(new_actor())
                pending.appendleft(block)
                continue
            idle.append(actor)
            written += 1
            returned += len(json.dumps(record))
            logger.log(
                logging.DEBUG if options.quiet else logging.INFO,
                "block %d written (%d of %d)",
                record["index"],
                written,
                len(todo),
            )
    finally:
        for actor in idle + [actor for actor, _ in running.values()]:
            ray.kill(actor, no_restart=True)
    return returned


def _publish(
    filesystem: FileSystem, root: str, blocks: list[Block], plan: dict[str, Any]
) -> dict[str, Any]:
    """The manifest, written last, from the parts' own metadata (footers only)."""
    parts = []
    for block in blocks:
        name = part_name(block.index)
        metadata = pq.read_metadata(f"{root}/{name}", filesystem=filesystem)
        extra = metadata.metadata or {}
        parts.append(
            {
                "name": name,
                "first_row": block.first_row,
                "rows": metadata.num_rows,
                "rejects": block.count - metadata.num_rows,
                "node": extra.get(_NODE_KEY, b"").decode(),
            }
        )
    manifest = {
        "format": "embedloom --ray: Parquet parts in input order",
        "rows": sum(p["rows"] for p in parts),
        "rejected": sum(p["rejects"] for p in parts),
        "plan": plan,
        "parts": parts,
    }
    _write_json(filesystem, f"{root}/{MANIFEST}", manifest)
    return manifest


def _has(filesystem: FileSystem, root: str, name: str) -> bool:
    from pyarrow.fs import FileType

    return bool(filesystem.get_file_info(f"{root}/{name}").type == FileType.File)


def _write_json(filesystem: FileSystem, path: str, value: dict[str, Any]) -> None:
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    with filesystem.open_output_stream(temporary) as stream:
        stream.write(json.dumps(value, indent=1).encode())
    filesystem.move(temporary, path)


def _count_rows(path: str, readers: dict[str, Any]) -> int:
    """A file's rows, checked first (a missing column fails here, naming the file)."""
    check_input(path, **readers)
    counted = count_rows(path)
    if counted is None:  # CSV: quoted newlines; count records, not lines
        counted = sum(1 for _ in read_records(path, **readers))
    return counted


def _count_on_cluster(files: list[Path], readers: dict[str, Any]) -> list[int]:
    """Row counts from a task per file, on the cluster: the driver never reads rows."""
    import ray

    task = ray.remote(num_cpus=0.1)(_count_rows)
    return list(ray.get([task.remote(str(path), readers) for path in files]))


class BlockWriter:
    """An actor: one engine for its life, writing the blocks it is given."""

    def __init__(
        self,
        settings: Settings,
        cpus: float,
        output: str,
        readers: dict[str, Any],
        on_error: str,
    ) -> None:
        import ray

        from embedloom.embedder import Embedder

        self._embedder = Embedder(
            settings=settings.replace(
                threads=threads_for_cpus(cpus), sharing="dedicated", replicas=0
            ),
            batch_per_request=True,
        )
        self._filesystem, self._root = _output_location(output)
        self._readers = readers
        self._on_error = on_error
        self._node = ray.get_runtime_context().get_node_id()

    def write(self, block: Block) -> dict[str, Any]:
        items: Iterator[Record | Reject] = itertools.islice(
            read_records(block.path, **self._readers), block.start, block.start + block.count
        )
        if self._on_error == "stop":
            items = stop_at_first_reject(items)
        chunk = list(items)
        records = [item for item in chunk if isinstance(item, Record)]
        rejects = [item for item in chunk if isinstance(item, Reject)]
        vectors = np.asarray(embed_sorted(self._embedder.embed, texts_of(chunk)), np.float32)
        if rejects:
            # Before the part: a part that exists means its rejects are written too.
            self._put(rejects_name(block.index), b"".join(map(_global_reject(block), rejects)))
        table = self._table(block, records, vectors)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self._put(part_name(block.index), sink.getvalue().to_pybytes())
        return {"index": block.index, "rows": len(records), "node": self._node}

    def _table(self, block: Block, records: list[Record], vectors: np.ndarray) -> pa.Table:
        width = self._embedder.model_info.dimensions
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        columns: dict[str, pa.Array] = {
            "row": pa.array([block.first_row + r.row - block.start for r in records], pa.int64()),
        }
        if self._readers["id_field"] is not None:
            columns["id"] = pa.array([r.id for r in records], pa.string())
        carried = _parquet_columns(block, [r.row - block.start for r in records])
        if carried is not None:
            for name in carried.column_names:
                if name not in ("row", "id", "embedding"):
                    columns[name] = carried.column(name)
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, width)
        table = pa.table(columns)
        return table.replace_schema_metadata({_NODE_KEY: self._node.encode()})

    def _put(self, name: str, data: bytes) -> None:
        path = f"{self._root}/{name}"
        temporary = f"{self._root}/.{name}.{uuid.uuid4().hex}.tmp"
        with self._filesystem.open_output_stream(temporary) as stream:
            stream.write(data)
        self._filesystem.move(temporary, path)


def _parquet_columns(block: Block, kept: list[int]) -> pa.Table | None:
    """A Parquet block's input columns, for the rows ``kept`` (positions in the
    block): carried into the part, as ``embed_dataset`` keeps them. None for the
    other formats, whose parts hold the single-machine job's columns."""
    if input_format(block.path) != "parquet":
        return None
    batches = []
    offset = 0
    for batch in pq.ParquetFile(block.path).iter_batches(batch_size=8192):
        end = offset + batch.num_rows
        if end > block.start and offset < block.start + block.count:
            low = max(block.start - offset, 0)
            high = min(block.start + block.count - offset, batch.num_rows)
            batches.append(batch.slice(low, high - low))
        offset = end
        if offset >= block.start + block.count:
            break
    rows = pa.Table.from_batches(batches)
    return rows.take(pa.array(kept, pa.int64()))


def _global_reject(block: Block) -> Any:
    """A reject's line with its row across the whole input, as the ``row`` column."""

    def line(reject: Reject) -> bytes:
        global_row = block.first_row + reject.row - block.start
        return reject_line(Reject(global_row, reject.where, reject.reason))

    return line
