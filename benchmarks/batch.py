"""The batch job against the engine in-process, and its memory at 100k and 1M rows.

    .venv/bin/python benchmarks/batch.py --rows 100000                 # ~8 minutes here
    .venv/bin/python benchmarks/batch.py --rows 1000000 --memory-only  # ~40 minutes here

Throughput: the same short texts through ``Embedder().embed`` in one process
(the engine at its best: one call, every input queued at once) and through
``embedloom embed`` (a subprocess: reading, chunking, writing Parquet,
manifest), both excluding the model's loading. Memory: the job's peak RSS
as it reports it. Writes results/batch-<rows>.md and a JSON file.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EMBEDLOOM = str(Path(sys.executable).with_name("embedloom"))

sys.path.insert(0, str(HERE))
from record import measured_now, write_results  # noqa: E402
from workload import sentences  # noqa: E402


def short_texts(rows: int) -> list[str]:
    """Short texts of varied length, from the standard workload's sentences."""
    base = sentences(2048)
    return [" ".join(base[i % len(base)].split()[: 3 + i % 9]) for i in range(rows)]


def engine_rows_per_second(texts: list[str]) -> float:
    from embedloom import Embedder, Settings

    with Embedder(settings=Settings(log_level="warning")) as embedder:
        embedder.embed(texts[:256])  # warm
        started = time.perf_counter()
        embedder.embed(texts)
        return len(texts) / (time.perf_counter() - started)


def job(source: Path, output: Path) -> dict[str, Any]:
    result = subprocess.run(
        [EMBEDLOOM, "embed", str(source), "-o", str(output), "--quiet", "--log-level", "warning"],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(
        r"embedded (\d+) rows in ([\d.]+) s \(model loaded in ([\d.]+) s\).*peak memory (\d+) MB",
        result.stdout,
    )
    assert found, result.stdout
    rows, seconds, load, peak = found.groups()
    return {
        "rows": int(rows),
        "seconds": float(seconds),
        "load_seconds": float(load),
        "rows_per_s": int(rows) / (float(seconds) - float(load)),
        "peak_rss_mb": int(peak),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--memory-only", action="store_true", help="skip the engine comparison")
    args = parser.parse_args()

    texts = short_texts(args.rows)
    results: dict[str, Any] = measured_now(rows=args.rows)
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "texts.txt"
        source.write_text("".join(t + "\n" for t in texts))
        if not args.memory_only:
            results["engine_rows_per_s"] = engine_rows_per_second(texts)
        results["job"] = job(source, Path(scratch) / "out.parquet")
    lines = [
        f"Measured {results['when']} ({results['machine']}): {args.rows} short texts (3-11 words).",
        "",
    ]
    run = results["job"]
    lines.append(
        f"- job: {run['rows_per_s']:.0f} rows/s after a {run['load_seconds']:.1f} s model load, "
        f"{run['seconds']:.0f} s in all; peak RSS {run['peak_rss_mb']} MB"
    )
    if "engine_rows_per_s" in results:
        engine = results["engine_rows_per_s"]
        lines.append(
            f"- engine in-process: {engine:.0f} rows/s; the job reaches "
            f"{run['rows_per_s'] / engine:.2f}× of it"
        )
    report = "\n".join(lines) + "\n"
    write_results(
        results, report, json_prefix=f"batch-{args.rows}-", markdown=f"batch-{args.rows}.md"
    )
    print(report)


if __name__ == "__main__":
    main()
