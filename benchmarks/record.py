"""Where a benchmark's figures go: all of them as JSON named by the time they were
measured, and the report as markdown, in ``benchmarks/results/`` — one writer
for the scripts, so every result file says when and on what it was measured."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "machine", "measured_now", "write_results"]

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """The CPU's model and the cores this process sees."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {model}"


def measured_now(**figures: Any) -> dict[str, Any]:
    """A results record opened now: when, on what machine, then ``figures``."""
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
    } | figures


def write_results(results: dict[str, Any], report: str, *, json_prefix: str, markdown: str) -> Path:
    """``results`` to ``{json_prefix}{time}.json`` and ``report`` to ``markdown`` (a
    name in the results directory); the JSON's path."""
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{json_prefix}{stamp}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / markdown).write_text(report)
    return path
