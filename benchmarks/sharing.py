"""Sharing strategies against each other: locked, dedicated, replicas (K=2).

    .venv/bin/python benchmarks/sharing.py --duration 5 --rounds 2   # ~8 min, needs [bench]

Each strategy runs the real engine (real model, its own thread budget: all the
cores this process may use) in a process of its own. The three processes load
once, then take turns cell by cell — request size (1, 8, 64 sentences) ×
concurrency (1, 8, 32 closed-loop callers) — so the strategies are compared
seconds apart on this noisy shared machine, and the whole grid runs in
``--rounds`` rounds (the report takes the median per cell). Writes
``results/sharing.md``, ``results/sharing.png`` and a JSON file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STRATEGIES = ("locked", "dedicated", "replicas")
SIZES = (1, 8, 64)
CONCURRENCY = (1, 8, 32)

sys.path.insert(0, str(HERE))
from record import RESULTS, measured_now, write_results  # noqa: E402
from workload import sentences  # noqa: E402


def serve_cells(strategy: str) -> None:
    """Worker mode: load one engine, then run the cells asked for on stdin."""
    from embedloom import Engine, Settings

    settings = Settings(
        sharing=strategy,  # type: ignore[arg-type]
        replicas=2 if strategy == "replicas" else 0,
        max_queued_inputs=4096,
        max_client_batch_size=64,
        log_level="warning",
    )
    texts = sentences(4096)

    async def cell(engine: Engine, size: int, callers: int, duration: float) -> dict[str, Any]:
        latencies: list[float] = []
        done = 0
        stop_at = time.perf_counter() + duration

        async def caller(index: int) -> None:
            nonlocal done
            cursor = index * 997
            while time.perf_counter() < stop_at:
                batch = [texts[(cursor + i) % len(texts)] for i in range(size)]
                cursor += size * callers
                started = time.perf_counter()
                await engine.embed(batch)
                latencies.append(time.perf_counter() - started)
                done += size

        began = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(callers)))
        elapsed = time.perf_counter() - began
        latencies.sort()
        return {
            "sentences_per_s": done / elapsed,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        }

    async def main() -> None:
        async with Engine.from_settings(settings) as engine:
            worker = engine.statistics().worker
            print(
                json.dumps(
                    {
                        "ready": strategy,
                        "replicas": worker.replicas,
                        "inference_threads": worker.inference_threads,
                        "reported_threads": worker.reported_threads,
                    }
                ),
                flush=True,
            )
            loop = asyncio.get_running_loop()
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                size, callers, duration = json.loads(line)
                print(json.dumps(await cell(engine, size, callers, duration)), flush=True)

    asyncio.run(main())


class Runner:
    def __init__(self, strategy: str) -> None:
        self.strategy = strategy
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-cells", strategy],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.strategy} worker died")
        return dict(json.loads(line))

    def run(self, size: int, callers: int, duration: float) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps([size, callers, duration]) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve-cells", choices=STRATEGIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_cells:
        serve_cells(args.serve_cells)
        return
    runners = {s: Runner(s) for s in STRATEGIES}
    raw: dict[str, list[dict[str, Any]]] = {}
    try:
        for round_index in range(args.rounds):
            for size in SIZES:
                for callers in CONCURRENCY:
                    order = STRATEGIES if round_index % 2 == 0 else STRATEGIES[::-1]
                    for strategy in order:
                        print(
                            f"round {round_index + 1}: {strategy} {size}×{callers}", file=sys.stderr
                        )
                        result = runners[strategy].run(size, callers, args.duration)
                        raw.setdefault(f"{strategy}/{size}/{callers}", []).append(result)
    finally:
        for runner in runners.values():
            runner.close()
    cells = {
        key: {
            metric: statistics.median(r[metric] for r in runs)
            for metric in ("sentences_per_s", "p50_ms", "p99_ms")
        }
        for key, runs in raw.items()
    }
    results = measured_now(
        duration_s=args.duration,
        rounds=args.rounds,
        workers={s: r.ready for s, r in runners.items()},
        cells=cells,
        raw=raw,
    )
    report = _report(results)
    write_results(results, report, json_prefix="sharing-", markdown="sharing.md")
    _chart(cells, RESULTS / "sharing.png")
    print(report)


def _report(results: dict[str, Any]) -> str:
    cells = results["cells"]
    workers = results["workers"]
    lines = [
        f"Measured {results['when']} on {results['machine']}, engine in-process with the real "
        f"model, {results['duration_s']:.0f} s per cell, median of {results['rounds']} rounds; "
        "throughput in sentences/s, latency per request.",
        "",
        "Workers: "
        + "; ".join(
            f"{s} = {w['replicas']} model(s), {w['inference_threads']} inference thread(s), "
            f"intra-op threads reported {tuple(w['reported_threads'])}"
            for s, w in workers.items()
        )
        + ".",
        "",
        "| sentences/request | callers | "
        + " | ".join(f"{s} sent/s | {s} p50 / p99 ms" for s in STRATEGIES)
        + " | best |",
        "|---:|---:|" + "---:|---:|" * len(STRATEGIES) + "---|",
    ]
    for size in SIZES:
        for callers in CONCURRENCY:
            row = [str(size), str(callers)]
            best = max(STRATEGIES, key=lambda s: cells[f"{s}/{size}/{callers}"]["sentences_per_s"])
            for strategy in STRATEGIES:
                cell = cells[f"{strategy}/{size}/{callers}"]
                row.append(f"{cell['sentences_per_s']:.1f}")
                row.append(f"{cell['p50_ms']:.0f} / {cell['p99_ms']:.0f}")
            row.append(best)
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _chart(cells: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(SIZES), figsize=(12, 3.8), sharey=False)
    for axis, size in zip(axes, SIZES, strict=True):
        for strategy in STRATEGIES:
            values = [cells[f"{strategy}/{size}/{c}"]["sentences_per_s"] for c in CONCURRENCY]
            axis.plot(CONCURRENCY, values, marker="o", label=strategy)
        axis.set_title(f"{size} sentence(s) per request")
        axis.set_xlabel("concurrent callers")
        axis.set_xscale("log", base=2)
        axis.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("sentences/s")
    axes[0].legend()
    figure.suptitle("embedloom sharing strategies: throughput against concurrency")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
