"""Input files as a stream of records, never loaded whole.

Every input row becomes either a ``Record`` (a text to embed) or a ``Reject``
(where it was and why it cannot be embedded), in input order, each with its
0-based position in the input (``row``) and a human location (``where``:
line or row number, 1-based). Problems with the whole file (missing, no such
column, unreadable) raise ``BatchInputError`` at once.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from embedloom.errors import InvalidInput

__all__ = ["BatchInputError", "Record", "Reject", "check_input", "count_rows", "read_records"]

# Rows read from a columnar file at a time: bounded memory whatever the file size.
_ARROW_BATCH_ROWS = 8192


class BatchInputError(InvalidInput):
    """The input cannot be read: its message names the file and the place."""


@dataclass(frozen=True, slots=True)
class Record:
    row: int
    where: str
    text: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    row: int
    where: str
    reason: str


Item = Record | Reject


def input_format(path: str) -> str:
    if path == "-":
        return "txt"
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in ("txt", "jsonl", "csv", "parquet"):
        return suffix
    raise BatchInputError(
        f"{path}: unknown input format {suffix!r}; use .txt, .jsonl, .csv, .parquet or - for stdin"
    )


def read_records(
    path: str, *, field: str = "text", id_field: str | None = None, column: str | None = None
) -> Iterator[Item]:
    """The records of ``path`` (``-``: stdin lines), in order."""
    kind = input_format(path)
    if path != "-" and not Path(path).is_file():
        raise BatchInputError(f"{path}: no such file")
    if kind == "txt":
        return _lines(path)
    if kind == "jsonl":
        return _jsonl(path, field, id_field)
    return _columnar(path, kind, column or field)


def check_input(
    path: str, *, field: str = "text", id_field: str | None = None, column: str | None = None
) -> None:
    """Fail now, naming the problem and its fix, if ``path`` cannot be read as asked:
    a missing or unreadable file, an unknown format, a column or field it lacks.
    Cheap (the file's head only), so a job checks before it writes anything."""
    kind = input_format(path)
    if path == "-":
        return
    source = Path(path)
    if not source.exists():
        raise BatchInputError(f"{path}: no such file")
    if not source.is_file():
        raise BatchInputError(f"{path}: not a file (a directory?); give one input file")
    try:
        with source.open("rb") as handle:
            head = handle.read(_HEAD_BYTES)
    except OSError as exc:
        raise BatchInputError(f"{path}: cannot read it ({exc.strerror})") from exc
    if kind == "jsonl":
        _check_jsonl_head(path, head, field, id_field)
    elif kind in ("csv", "parquet"):
        names = _column_names(path, kind)
        wanted = column or field
        if wanted not in names:
            raise BatchInputError(
                f"{path}: no column {wanted!r} (columns: {', '.join(names) or 'none'}); "
                "name the text column with --column"
            )


# Enough of a file's start to find its first record.
_HEAD_BYTES = 1 << 20


def _check_jsonl_head(path: str, head: bytes, field: str, id_field: str | None) -> None:
    """The first line that is a JSON object must have the field (and the id field):
    a wrong ``--field`` is a mistake about the whole file, not about every row."""
    for number, raw in enumerate(head.splitlines(), start=1):
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue  # a bad row: the job rejects it in its place
        if not isinstance(value, dict):
            continue
        for flag, name in (("--field", field), ("--id-field", id_field)):
            if name is not None and name not in value:
                fields = ", ".join(map(repr, value)) or "none"
                raise BatchInputError(
                    f"{path}:{number}: no field {name!r} in the first record "
                    f"(its fields: {fields}); pass {flag} to name it"
                )
        return


def _column_names(path: str, kind: str) -> list[str]:
    import pyarrow as pa

    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        from pyarrow import csv

        return list(csv.open_csv(path).schema.names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BatchInputError(f"{path}: cannot read it as {kind.upper()}: {exc}") from exc


def count_rows(path: str) -> int | None:
    """How many rows ``path`` holds, cheaply (None for stdin): for the progress bar's
    total and ETA."""
    kind = input_format(path)
    if path == "-":
        return None
    if kind == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if kind == "csv":
        return None  # quoted newlines make a line count wrong; no total, no ETA
    with open(path, "rb") as lines:
        return sum(1 for _ in lines)


def _raw_lines(path: str) -> Iterator[bytes]:
    if path == "-":
        yield from sys.stdin.buffer
        return
    with open(path, "rb") as lines:
        yield from lines


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return None


def _lines(path: str) -> Iterator[Item]:
    for row, raw in enumerate(_raw_lines(path)):
        where = f"{path}:{row + 1}"
        text = _decode(raw)
        if text is None:
            yield Reject(row, where, "not valid UTF-8")
        elif not text.strip():
            yield Reject(row, where, "empty text")
        else:
            yield Record(row, where, text)


def _jsonl(path: str, field: str, id_field: str | None) -> Iterator[Item]:
    for row, raw in enumerate(_raw_lines(path)):
        where = f"{path}:{row + 1}"
        if _decode(raw) is None:
            yield Reject(row, where, "not valid UTF-8")
            continue
        try:
            value: Any = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield Reject(row, where, f"not valid JSON: {exc}")
            continue
        if not isinstance(value, dict):
            yield Reject(row, where, f"a JSON {type(value).__name__}, not an object")
            continue
        text = value.get(field)
        if field not in value:
            yield Reject(row, where, f"no field {field!r}")
        elif not isinstance(text, str):
            yield Reject(row, where, f"field {field!r} is {type(text).__name__}, not a string")
        elif not text.strip():
            yield Reject(row, where, f"field {field!r} is an empty text")
        elif id_field is not None and value.get(id_field) is None:
            yield Reject(row, where, f"no id field {id_field!r}")
        else:
            identity = None if id_field is None else str(value[id_field])
            yield Record(row, where, text, identity)


def _columnar(path: str, kind: str, column: str) -> Iterator[Item]:
    import pyarrow as pa

    batches: Iterator[Any]
    if kind == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        if column not in parquet.schema_arrow.names:
            raise BatchInputError(
                f"{path}: no column {column!r} (columns: {', '.join(parquet.schema_arrow.names)})"
            )
        batches = parquet.iter_batches(batch_size=_ARROW_BATCH_ROWS, columns=[column])
    else:
        from pyarrow import csv

        try:
            reader = csv.open_csv(
                path,
                convert_options=csv.ConvertOptions(
                    include_columns=[column],
                    # Bytes, decoded per row, so one bad row is one reject.
                    column_types={column: pa.binary()},
                ),
            )
        except (pa.ArrowInvalid, KeyError) as exc:
            raise BatchInputError(f"{path}: cannot read column {column!r}: {exc}") from exc
        batches = iter(reader)
    row = 0
    for batch in batches:
        for value in batch.column(0).to_pylist():
            where = f"{path}: row {row + 1}"
            text = _decode(value) if isinstance(value, bytes) else value
            if value is None:
                yield Reject(row, where, f"column {column!r} is empty")
            elif text is None:
                yield Reject(row, where, "not valid UTF-8")
            elif not isinstance(text, str):
                yield Reject(row, where, f"column {column!r} holds {type(text).__name__}")
            elif not text.strip():
                yield Reject(row, where, f"column {column!r} is an empty text")
            else:
                yield Record(row, where, text)
            row += 1
