"""Output files written chunk by chunk, resumable, published whole.

Everything in progress lives in ``OUTPUT.partial/`` (a directory next to the
output): the data written so far and the manifest. After each chunk the data
is flushed to disk first, then the manifest is replaced atomically, so the
manifest never claims a chunk the disk does not hold. When the job ends, the
output is assembled under a temporary name and renamed into place: a file
under the output's name is always complete.

- Parquet: one part file per chunk (``part-000000.parquet``: ``row`` (int64),
  ``id`` (string, when given) and ``embedding``, a fixed-size list of float32 or
  float16 — or, from a sparse model, ``indices`` (list of int32) and ``values``
  (list of float32 or float16), its non-zero entries), gathered into one file at
  the end, one row group per part.
- ``.npy``: rows appended to a raw file, then copied into the final matrix
  through a memory map, a window at a time (each window mapped, written,
  flushed and unmapped, so resident memory stays bounded).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from embedloom.backends.base import SparseVector
from embedloom.errors import InvalidInput

__all__ = ["ChunkVectors", "OutputWriter", "open_writer", "output_format", "remove_partial"]

# A chunk's vectors: dense rows, or a sparse model's vectors one by one.
ChunkVectors = npt.NDArray[np.floating] | Sequence[SparseVector]

# Rows per memory-map window when the .npy is assembled.
_NPY_WINDOW_ROWS = 16384


class OutputWriter(Protocol):
    def write(
        self,
        chunk: int,
        rows: Sequence[int],
        ids: Sequence[str | None],
        vectors: ChunkVectors,
    ) -> None:
        """Write one chunk's rows durably (flushed and fsynced)."""
        ...

    def truncate(self, chunks: int, rows: int) -> None:
        """Forget anything past the first ``chunks`` chunks / ``rows`` rows (resume)."""
        ...

    def publish(self, final: Path) -> None:
        """Assemble the output under a temporary name and rename it to ``final``."""
        ...


def output_format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("parquet", "npy"):
        raise InvalidInput(f"{path}: unknown output format {suffix!r}; use .parquet or .npy")
    return suffix


def open_writer(
    path: Path, partial: Path, *, dtype: str, with_ids: bool, sparse: bool = False
) -> OutputWriter:
    """A writer of dense vectors, or with ``sparse`` of sparse ones (Parquet only)."""
    if output_format(path) == "npy":
        if sparse:
            raise InvalidInput(
                f"{path}: a sparse model's vectors are written as Parquet (their non-zero "
                "indices and values); use -o FILE.parquet"
            )
        return _NpyWriter(partial, np.dtype(dtype))
    return _ParquetWriter(partial, dtype, with_ids, sparse)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _ParquetWriter:
    def __init__(self, partial: Path, dtype: str, with_ids: bool, sparse: bool) -> None:
        self._partial = partial
        self._dtype = dtype
        self._with_ids = with_ids
        self._sparse = sparse

    def _part(self, chunk: int) -> Path:
        return self._partial / f"part-{chunk:06d}.parquet"

    def _table(
        self, rows: Sequence[int], ids: Sequence[str | None], vectors: ChunkVectors
    ) -> object:
        import pyarrow as pa

        value_type = pa.float16() if self._dtype == "float16" else pa.float32()
        columns = {"row": pa.array(rows, type=pa.int64())}
        if self._with_ids:
            columns["id"] = pa.array(ids, type=pa.string())
        if self._sparse:
            sparse = [v for v in vectors if isinstance(v, SparseVector)]
            lengths = [len(v.indices) for v in sparse]
            offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), type=pa.int32())

            def flat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
                return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

            indices = flat([v.indices for v in sparse], np.int32)
            values = flat([v.values for v in sparse], np.float32)
            columns["indices"] = pa.ListArray.from_arrays(offsets, pa.array(indices, pa.int32()))
            columns["values"] = pa.ListArray.from_arrays(
                offsets, pa.array(values.astype(np.dtype(self._dtype)), value_type)
            )
        else:
            dense = np.ascontiguousarray(vectors)
            flat_values = pa.array(dense.reshape(-1), type=value_type)
            columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat_values, dense.shape[1])
        return pa.table(columns)

    def write(
        self,
        chunk: int,
        rows: Sequence[int],
        ids: Sequence[str | None],
        vectors: ChunkVectors,
    ) -> None:
        import pyarrow.parquet as pq

        part = self._part(chunk)
        temporary = part.with_suffix(".tmp")
        pq.write_table(self._table(rows, ids, vectors), temporary)
        _fsync(temporary)
        os.replace(temporary, part)

    def truncate(self, chunks: int, rows: int) -> None:
        for part in self._partial.glob("part-*.parquet"):
            if int(part.stem.removeprefix("part-")) >= chunks:
                part.unlink()

    def publish(self, final: Path) -> None:
        import pyarrow.parquet as pq

        parts = sorted(self._partial.glob("part-*.parquet"))
        temporary = self._partial / "output.parquet"
        writer = None
        try:
            for part in parts:
                table = pq.read_table(part)
                if table.num_rows == 0:
                    continue
                if writer is None:
                    writer = pq.ParquetWriter(temporary, table.schema)
                writer.write_table(table)
            if writer is None:  # nothing was embedded: an empty file of the right shape
                empty = self._table(
                    [], [], [] if self._sparse else np.zeros((0, 1), dtype=np.float32)
                )
                pq.write_table(empty, temporary)
        finally:
            if writer is not None:
                writer.close()
        _fsync(temporary)
        os.replace(temporary, final)


class _NpyWriter:
    def __init__(self, partial: Path, dtype: np.dtype[np.floating]) -> None:
        self._raw = partial / "rows.raw"
        self._dtype = dtype
        self._width: int | None = None
        self._width_file = partial / "width"

    def write(
        self,
        chunk: int,
        rows: Sequence[int],
        ids: Sequence[str | None],
        vectors: ChunkVectors,
    ) -> None:
        assert isinstance(vectors, np.ndarray), "sparse vectors are written as Parquet"
        if self._width is None:
            self._width = int(vectors.shape[1])
            self._width_file.write_text(str(self._width))
        with self._raw.open("ab") as out:
            out.write(np.ascontiguousarray(vectors, dtype=self._dtype).tobytes())
            out.flush()
            os.fsync(out.fileno())

    def truncate(self, chunks: int, rows: int) -> None:
        if self._width_file.is_file():
            self._width = int(self._width_file.read_text())
        if not self._raw.exists():
            return
        keep = rows * (self._width or 0) * self._dtype.itemsize
        with self._raw.open("r+b") as raw:
            raw.truncate(keep)

    def publish(self, final: Path) -> None:
        width = self._width or (
            int(self._width_file.read_text()) if self._width_file.is_file() else 0
        )
        row_bytes = width * self._dtype.itemsize
        total = self._raw.stat().st_size // row_bytes if row_bytes and self._raw.exists() else 0
        temporary = self._raw.with_name("output.npy")
        if total == 0:  # a memory map cannot be empty
            np.save(temporary, np.zeros((0, width), dtype=self._dtype))
            os.replace(temporary, final)
            return
        header = np.lib.format.open_memmap(
            temporary, mode="w+", dtype=self._dtype, shape=(total, width)
        )
        offset = header.offset
        del header
        with self._raw.open("rb") as raw:
            for start in range(0, total, _NPY_WINDOW_ROWS):
                count = min(_NPY_WINDOW_ROWS, total - start)
                block = np.frombuffer(raw.read(count * row_bytes), dtype=self._dtype)
                window = np.memmap(
                    temporary,
                    dtype=self._dtype,
                    mode="r+",
                    offset=offset + start * row_bytes,
                    shape=(count, width),
                )
                window[:] = block.reshape(count, width)
                window.flush()
                del window
        _fsync(temporary)
        os.replace(temporary, final)


def remove_partial(partial: Path) -> None:
    shutil.rmtree(partial, ignore_errors=True)
