"""How ``embed --ray`` cuts its input into blocks (pure: files and row counts in, blocks
out), and the names and fingerprint of what it writes.

A block is ``chunk_rows`` consecutive rows of one input file (the last block of
a file may be shorter). Blocks are numbered across the files in input order
(files sorted by name), so a block's number — and the name of the part it is
written to — depends only on the input and the chunk size, never on how many
nodes or actors ran the job: the parts sorted by name are the input's order,
and a resumed job knows which blocks are done by which parts exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedloom.batch.readers import BatchInputError, input_format

__all__ = [
    "MANIFEST",
    "PLAN",
    "Block",
    "input_files",
    "part_name",
    "plan_blocks",
    "rejects_name",
]

# Written first: what the job is (its fingerprint), so --resume can check it.
PLAN = "_embedloom_plan.json"
# Written last: the job is complete, and these are its parts.
MANIFEST = "_embedloom_manifest.json"


@dataclass(frozen=True, slots=True)
class Block:
    index: int  # across every file, in input order
    path: str  # the input file
    start: int  # the block's first row within its file
    count: int  # rows
    first_row: int  # the block's first row across the whole input (the ``row`` column)


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def rejects_name(index: int) -> str:
    return f"rejects-{index:06d}.jsonl"


def input_files(source: Path) -> list[Path]:
    """``source`` itself, or the input files of a directory (any of the formats the
    single-machine job reads; hidden files skipped), sorted by name."""
    if not source.exists():
        raise BatchInputError(f"{source}: no such file or directory")
    if source.is_file():
        input_format(str(source))  # refuses an unknown format, naming the ones it reads
        return [source]
    files = sorted(
        path
        for path in source.rglob("*")
        if path.is_file()
        and not any(part.startswith((".", "_")) for part in path.relative_to(source).parts)
    )
    for path in files:
        input_format(str(path))
    if not files:
        raise BatchInputError(f"{source}: no input files in it")
    return files


def plan_blocks(counts: Sequence[tuple[str, int]], chunk_rows: int) -> list[Block]:
    """The blocks of files with these row counts (in input order)."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be positive")
    blocks: list[Block] = []
    first_row = 0
    for path, rows in counts:
        for start in range(0, rows, chunk_rows):
            count = min(chunk_rows, rows - start)
            blocks.append(Block(len(blocks), path, start, count, first_row + start))
        first_row += rows
    return blocks


def fingerprint(files: Sequence[Path], **options: Any) -> dict[str, Any]:
    """What must not change between a run and its resumption: the input files (by
    path, size and time) and the options that change what is written."""
    stats = [(path, path.stat()) for path in files]
    return {
        "version": 1,
        "files": [[str(path.resolve()), st.st_size, st.st_mtime_ns] for path, st in stats],
        **options,
    }
