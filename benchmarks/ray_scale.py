"""Ray Data batch embedding on this machine: 1 actor against 2, and the cost of starting.

    .venv/bin/python benchmarks/ray_scale.py --rows 4000      # writes benchmarks/results/ray.md

In one run, on the standard workload: the in-process ``Embedder`` (the
single-machine baseline), then ``embed_dataset`` with 1 actor × 1 CPU and with
2 actors × 0.5 CPU on a local Ray of 2 CPUs (the pool must leave a CPU's worth
for the read tasks). Reported: rows/s over the whole call (actor start and model
load included), rows/s after the first batch, Ray's start time, and each
actor's time to its first batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import sentences

ROOT = Path(__file__).resolve().parent.parent


def baseline(texts: list[str]) -> dict[str, float]:
    from embedloom import Embedder

    started = time.perf_counter()
    with Embedder(batch_per_request=True) as embedder:
        loaded = time.perf_counter()
        for start in range(0, len(texts), 256):
            embedder.embed(texts[start : start + 256])
        finished = time.perf_counter()
    return {"load_s": loaded - started, "rows_per_s": len(texts) / (finished - loaded)}


def on_ray(texts: list[str], actors: int, cpus: float) -> dict[str, float]:
    import ray

    from embedloom.distributed import embed_dataset

    ds = ray.data.from_items([{"text": t} for t in texts]).materialize()
    started = time.perf_counter()
    first_at = None
    rows = 0
    for batch in embed_dataset(ds, actors=actors, cpus_per_actor=cpus).iter_batches(batch_size=256):
        rows += len(batch["embedding"])
        if first_at is None:
            first_at = time.perf_counter()
    finished = time.perf_counter()
    assert rows == len(texts)
    assert first_at is not None
    return {
        "first_batch_s": first_at - started,
        "rows_per_s": rows / (finished - started),
        "rows_per_s_after_first": (rows - 256) / max(1e-9, finished - first_at),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "ray.md")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = sentences(args.rows)
    results: dict[str, Any] = {"baseline": baseline(texts)}
    import ray

    began = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results["ray_start_s"] = time.perf_counter() - began
    try:
        results["1x1.0"] = on_ray(texts, 1, 1.0)
        results["2x0.5"] = on_ray(texts, 2, 0.5)
    finally:
        ray.shutdown()
    text = report(results, args.rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


def report(results: dict[str, Any], rows: int) -> str:
    base = results["baseline"]["rows_per_s"]
    lines = [
        f"# Ray Data on this machine ({rows} rows)",
        "",
        f"`.venv/bin/python benchmarks/ray_scale.py --rows {rows}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"local Ray of 2 CPUs (started in {results['ray_start_s']:.1f} s).",
        "",
        "| setup | rows/s (whole call) | rows/s after the first batch | first batch after (s) "
        "| × in-process |",
        "|---|---:|---:|---:|---:|",
        f"| in-process `Embedder` (model loaded in {results['baseline']['load_s']:.1f} s) | "
        f"{base:.1f} | | | 1.00 |",
    ]
    for key, name in (("1x1.0", "1 actor × 1 CPU"), ("2x0.5", "2 actors × 0.5 CPU")):
        r = results[key]
        lines.append(
            f"| `embed_dataset`, {name} | {r['rows_per_s']:.1f} | "
            f"{r['rows_per_s_after_first']:.1f} | {r['first_batch_s']:.1f} | "
            f"{r['rows_per_s_after_first'] / base:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
