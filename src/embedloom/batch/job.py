"""``embedloom embed INPUT -o OUTPUT``: a file of texts to a file of vectors.

The data path: the reader streams records → they are cut into chunks of
``chunk_size`` input rows → ``parallel.bounded_map`` embeds at most
``max_in_flight`` chunks at a time (the engine batches each chunk's inputs
alone: ``batch_per_request``, so a run's vectors are reproducible bit for bit)
→ the writer writes each chunk in input order, then the manifest records it.
Memory holds a few chunks whatever the input's size.

``--resume`` continues an interrupted run from its manifest: the input is read
again from the start, the chunks already written are skipped, and the output
ends up the same, byte for byte, as an uninterrupted run's.
``--processes N`` embeds in N spawned worker processes, each an engine with
its share of the thread budget (and never a pool of its own on top).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embedloom.batch.chunks import embed_sorted, reject_line, stop_at_first_reject, texts_of
from embedloom.batch.readers import (
    Record,
    Reject,
    check_input,
    count_rows,
    read_records,
)
from embedloom.batch.writers import ChunkVectors, open_writer, output_format, remove_partial
from embedloom.config import Settings
from embedloom.errors import InvalidInput
from embedloom.parallel import bounded_map
from embedloom.tasks import ModelKind

__all__ = ["JobOptions", "JobSummary", "run_job"]

logger = logging.getLogger(__name__)

_MANIFEST_VERSION = 1


@dataclass(frozen=True)
class JobOptions:
    input: str
    output: Path
    field: str = "text"
    id_field: str | None = None
    column: str | None = None
    output_dtype: Literal["float32", "float16"] = "float32"
    on_error: Literal["stop", "skip"] = "stop"
    resume: bool = False
    overwrite: bool = False
    processes: int = 1
    chunk_size: int = 1024
    max_in_flight: int = 4
    quiet: bool = False
    settings: Settings = dataclasses.field(default_factory=Settings.from_environment)

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        source = Path(self.input)
        stat = source.stat() if self.input != "-" else None
        return {
            "version": _MANIFEST_VERSION,
            "input": str(source.resolve()) if stat else "-",
            "input_bytes": stat.st_size if stat else None,
            "input_mtime_ns": stat.st_mtime_ns if stat else None,
            "field": self.field,
            "id_field": self.id_field,
            "column": self.column,
            "dtype": self.output_dtype,
            # Not on_error: a run stopped at a bad row may resume skipping it.
            "chunk_size": self.chunk_size,
            "model": self.settings.model_ref,
            # Vectors of two variants must not end up in one output.
            "backend": self.settings.backend,
            "model_dtype": self.settings.dtype,
        }


@dataclass(frozen=True)
class JobSummary:
    rows: int
    rejected: int
    seconds: float  # in all, the model's loading included
    load_seconds: float  # of which, loading the model
    peak_rss_mb: float
    output: Path
    rejects: Path | None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        text = (
            f"embedded {self.rows} rows in {self.seconds:.1f} s "
            f"(model loaded in {self.load_seconds:.1f} s) "
            f"({self.rows_per_second:.0f} rows/s), "
            f"peak memory {self.peak_rss_mb:.0f} MB → {self.output}"
        )
        if self.rejects is not None:
            text += f"; {self.rejected} rejected → {self.rejects}"
        return text


@dataclass
class _Progress:
    chunks: int = 0
    rows_read: int = 0
    rows_written: int = 0
    rejected: int = 0
    rejects_bytes: int = 0


def run_job(options: JobOptions) -> JobSummary:
    """Run (or resume) the job; raises ``InvalidInput`` for input and output problems,
    before anything is written."""
    _check(options)
    sparse = _embeds_sparse(options)
    partial = options.output.with_name(options.output.name + ".partial")
    resuming = options.resume and partial.is_dir()
    progress = _prepare(options, partial)
    try:
        return _run(options, partial, progress, sparse=sparse)
    except BaseException:
        # A run that wrote nothing leaves nothing: no partial to trip the next run
        # ("pass --resume"), which would only be resuming a mistake.
        if not resuming and progress.chunks == 0:
            remove_partial(partial)
        raise


def _check(options: JobOptions) -> None:
    """Every mistake that can be seen without embedding, each naming its fix."""
    output_format(options.output)
    if options.processes < 1:
        raise InvalidInput("--processes must be at least 1")
    if options.chunk_size < options.settings.max_batch_size:
        raise InvalidInput(
            f"--chunk-size must be at least one batch ({options.settings.max_batch_size}): "
            "smaller chunks only add per-chunk overhead"
        )
    if options.resume and options.overwrite:
        raise InvalidInput("--resume and --overwrite contradict each other; pass one")
    if options.resume and options.input == "-":
        raise InvalidInput("a job reading stdin cannot be resumed; drop --resume")
    check_input(
        options.input, field=options.field, id_field=options.id_field, column=options.column
    )
    folder = options.output.parent
    if not folder.is_dir():
        raise InvalidInput(f"{folder}: no such directory for the output; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInput(f"{folder}: not writable; pass -o with a path you can write")
    if options.output.is_dir():
        raise InvalidInput(f"{options.output} is a directory; -o names the output file")


def _embeds_sparse(options: JobOptions) -> bool:
    """Whether the model makes sparse vectors; ``InvalidInput`` for a model that does
    not embed texts at all, or sparse vectors asked of an ``.npy`` output."""
    from embedloom.store import ModelStore, resolve_model
    from embedloom.tasks import model_kind

    settings = options.settings
    path = resolve_model(settings.model_ref, store=ModelStore.for_settings(settings)).path
    kind: ModelKind = model_kind(path)
    if kind == "cross-encoder":
        raise InvalidInput(
            f"{settings.model_ref} is a cross-encoder: it scores pairs of texts and "
            "makes no embeddings; serve it (embedloom serve) and POST /rerank or /predict"
        )
    if kind == "sparse" and output_format(options.output) == "npy":
        raise InvalidInput(
            f"{settings.model_ref} is a sparse model: its vectors are written as Parquet "
            "(their non-zero indices and values); use -o FILE.parquet"
        )
    return kind == "sparse"


def _run(options: JobOptions, partial: Path, progress: _Progress, *, sparse: bool) -> JobSummary:
    rejects_path = options.output.with_name(options.output.name + ".rejects.jsonl")
    started = time.perf_counter()
    writer = open_writer(
        options.output,
        partial,
        dtype=options.output_dtype,
        with_ids=options.id_field is not None,
        sparse=sparse,
    )
    writer.truncate(progress.chunks, progress.rows_written)
    rejects_partial = partial / "rejects.jsonl"
    with (
        _embedding_function(options, sparse=sparse) as embed,
        rejects_partial.open("ab") as rejects,
    ):
        load_seconds = time.perf_counter() - started
        rejects.truncate(progress.rejects_bytes)
        total = count_rows(options.input) if options.input != "-" else None
        bar = _progress_bar(options, total, progress.rows_read)
        try:
            for chunk_index, (items, vectors) in enumerate(
                _embedded_chunks(options, embed, skip_rows=progress.rows_read),
                start=progress.chunks,
            ):
                records = [item for item in items if isinstance(item, Record)]
                for reject in (item for item in items if isinstance(item, Reject)):
                    rejects.write(reject_line(reject))
                    progress.rejected += 1
                rejects.flush()
                os.fsync(rejects.fileno())
                writer.write(
                    chunk_index,
                    [r.row for r in records],
                    [r.id for r in records],
                    vectors,
                )
                progress.chunks = chunk_index + 1
                progress.rows_read += len(items)
                progress.rows_written += len(records)
                progress.rejects_bytes = rejects.tell()
                _write_manifest(partial, options, progress)
                logger.debug("chunk %d written (%d rows read)", chunk_index, progress.rows_read)
                if bar is not None:
                    bar.update(len(items))
        finally:
            if bar is not None:
                bar.close()
    if options.output.exists() and options.overwrite:
        options.output.unlink()
    writer.publish(options.output)
    kept_rejects = None
    if progress.rejected:
        os.replace(rejects_partial, rejects_path)
        kept_rejects = rejects_path
    remove_partial(partial)
    return JobSummary(
        rows=progress.rows_written,
        rejected=progress.rejected,
        seconds=time.perf_counter() - started,
        load_seconds=load_seconds,
        peak_rss_mb=_peak_rss_mb(options.processes > 1),
        output=options.output,
        rejects=kept_rejects,
    )


def _prepare(options: JobOptions, partial: Path) -> _Progress:
    """Start fresh, or pick up the manifest of an interrupted run."""
    if options.output.exists() and not options.overwrite:
        raise InvalidInput(f"{options.output} exists; pass --overwrite to replace it")
    manifest = partial / "manifest.json"
    if partial.exists() and not options.resume:
        if options.overwrite:
            remove_partial(partial)
        else:
            raise InvalidInput(
                f"an unfinished run left {partial}; pass --resume to continue it, "
                "or --overwrite to start again"
            )
    if options.resume and manifest.is_file():
        saved = json.loads(manifest.read_text())
        if saved["fingerprint"] != options.fingerprint():
            raise InvalidInput(
                f"{partial} belongs to a run with other input or options; "
                "pass --overwrite to start again"
            )
        progress = _Progress(**saved["progress"])
        logger.info(
            "resuming: %d chunks (%d rows) already written", progress.chunks, progress.rows_read
        )
        return progress
    partial.mkdir(parents=True, exist_ok=True)
    progress = _Progress()
    _write_manifest(partial, options, progress)
    return progress


def _write_manifest(partial: Path, options: JobOptions, progress: _Progress) -> None:
    body = json.dumps({"fingerprint": options.fingerprint(), "progress": asdict(progress)})
    fd, temporary = tempfile.mkstemp(prefix=".manifest-", dir=partial)
    with os.fdopen(fd, "w") as out:
        out.write(body)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, partial / "manifest.json")


_Embed = Callable[[list[Record | Reject]], ChunkVectors]


def _embedded_chunks(
    options: JobOptions, embed: _Embed, *, skip_rows: int
) -> Iterator[tuple[list[Record | Reject], ChunkVectors]]:
    """(the chunk's items, the vectors of its records), chunk after chunk, in order."""
    items = read_records(
        options.input, field=options.field, id_field=options.id_field, column=options.column
    )
    items = itertools.islice(items, skip_rows, None)
    if options.on_error == "stop":
        items = stop_at_first_reject(items)
    chunks = _chunked(items, options.chunk_size)
    yield from bounded_map(
        lambda batch: [(chunk, embed(chunk)) for chunk in batch],
        chunks,
        workers=max(2, options.processes),
        max_in_flight=options.max_in_flight,
        chunk_size=1,  # each unit is already a chunk of rows
    )


def _chunked(items: Iterator[Record | Reject], size: int) -> Iterator[list[Record | Reject]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


@contextlib.contextmanager
def _embedding_function(options: JobOptions, *, sparse: bool) -> Iterator[_Embed]:
    """``embed(chunk) -> vectors of its records`` (dense rows in the output's dtype, or
    sparse vectors), in this process or in workers."""
    dtype = np.dtype(options.output_dtype)

    def output(vectors: ChunkVectors) -> ChunkVectors:
        return vectors if sparse else np.asarray(vectors).astype(dtype)

    if options.processes == 1:
        from embedloom.embedder import Embedder

        with Embedder(settings=options.settings, batch_per_request=True) as embedder:
            embed = embedder.embed_sparse if sparse else embedder.embed
            yield lambda chunk: output(embed_sorted(embed, texts_of(chunk)))
        return
    from embedloom.offload import new_process_pool
    from embedloom.sharing import worker_budget
    from embedloom.threads import usable_cores

    cores = usable_cores().usable
    budget = worker_budget(options.settings.replace(workers=options.processes), cores=cores)
    logger.info(
        "%d worker processes × %d compute threads = %d, within %d usable cores",
        options.processes,
        budget,
        options.processes * budget,
        cores,
    )
    settings = options.settings.replace(threads=budget, workers=1)
    pool = new_process_pool(options.processes, initializer=_start_worker, initargs=(settings,))
    try:
        yield lambda chunk: output(pool.submit(_embed_in_worker, texts_of(chunk), sparse).result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- worker processes (--processes N) ---------------------------------------------

_worker_embedder: Any = None


def _start_worker(settings: Settings) -> None:
    global _worker_embedder
    from embedloom.embedder import Embedder

    _worker_embedder = Embedder(settings=settings, batch_per_request=True)


def _embed_in_worker(texts: list[str], sparse: bool) -> ChunkVectors:
    embed = _worker_embedder.embed_sparse if sparse else _worker_embedder.embed
    return embed_sorted(embed, texts)


def _progress_bar(options: JobOptions, total: int | None, already: int) -> Any:
    if options.quiet:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=already,
        unit="rows",
        dynamic_ncols=True,
        file=sys.stderr,
        smoothing=0.1,
    )


def _peak_rss_mb(with_children: bool) -> float:
    peak_kb = _own_peak_rss_kb()
    if with_children:
        peak_kb += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak_kb / 1024


def _own_peak_rss_kb() -> int:
    """This process's peak RSS. Linux keeps ``ru_maxrss`` across ``exec``, so a job
    started by a large process (a test runner, a notebook) would report that
    process's peak; ``VmHWM`` is this program's own."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
