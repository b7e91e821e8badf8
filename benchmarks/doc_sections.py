"""Benchmarks that share a document each write their own section of it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_between_markers", "write_section"]


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


def write_between_markers(path: Path, name: str, text: str) -> None:
    """Put ``text`` into ``path`` between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
    (which the document must hold: where the figures go is the document's choice)."""
    document = path.read_text()
    start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
    if start not in document or end not in document:
        raise ValueError(f"{path} has no {start.strip()} … {end} markers")
    before, rest = document.split(start, 1)
    after = rest.split(end, 1)[1]
    path.write_text(before + start + text + end + after)
