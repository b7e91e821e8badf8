"""Benchmarks that share a document each write their own section of it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_section"]


def write_section(path: Path, text: str) -> None:
    """Put ``text`` (starting with a ``# `` heading line) into ``path`` in place of the
    section with the same heading — up to the next ``# `` heading — or at its end."""
    heading = text.splitlines()[0]
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    starts = [i for i, line in enumerate(lines) if line.startswith("# ")]
    begin = next((i for i in starts if lines[i].rstrip("\n") == heading), None)
    if begin is None:
        kept = "".join(lines)
        path.write_text(kept + ("\n" if kept else "") + text)
        return
    end = next((i for i in starts if i > begin), len(lines))
    after = "".join(lines[end:])
    path.write_text("".join(lines[:begin]) + text + ("\n" + after if after else ""))
