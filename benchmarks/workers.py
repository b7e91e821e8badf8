"""Memory, start-up time and throughput of ``embedloom serve --workers N``.

    .venv/bin/python benchmarks/workers.py --duration 15 --rounds 4   # ~7 minutes

For --workers 1, 2 and 4, without and with --preload: time from launch until
every worker has logged its engine running, and the proportional set size
(PSS, /proc/PID/smaps_rollup: shared pages divided among the processes that
share them) of the master and of each worker after a short warm-up load.
Then throughput of --workers 1 against --workers 2 (both --preload) under 32
closed-loop clients sending one sentence each, alternated over rounds.
--workers 4 on this 2-core machine needs --threads 4 (the budget is never
split below one thread per worker), so it is measured for memory only.
Writes results/workers.md and a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EMBEDLOOM = str(Path(sys.executable).with_name("embedloom"))

sys.path.insert(0, str(HERE))
from record import measured_now, write_results  # noqa: E402
from run import _load  # noqa: E402
from workload import sentences  # noqa: E402


class Server:
    """``embedloom serve`` with JSON logs read by a thread; ready when every
    worker has logged its engine running."""

    def __init__(self, workers: int, preload: bool) -> None:
        args = ["--workers", str(workers)]
        if preload:
            args.append("--preload")
        if workers > 2:
            args += ["--threads", str(workers)]
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [EMBEDLOOM, "serve", "--port", "0", "--log-format", "json", *args],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = 0
        self.workers: list[int] = []
        while len(self.workers) < workers or not self.port:
            entry = self._lines.get(timeout=300)
            message = entry.get("message", "")
            if message.startswith("serving on "):
                self.port = int(message.rsplit(":", 1)[1])
            elif "engine running in process" in message:
                self.workers.append(int(entry["pid"]))
        self.ready_seconds = time.perf_counter() - self.started

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            try:
                self._lines.put(json.loads(line))
            except json.JSONDecodeError:
                continue

    def warm_up(self, requests: int = 40) -> None:
        texts = sentences(requests)
        for text in texts:
            body = json.dumps({"input": [text], "model": "all-MiniLM-L6-v2"}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/v1/embeddings", data=body
            )
            with urllib.request.urlopen(request, timeout=60) as reply:
                reply.read()

    def pss_mb(self) -> dict[str, Any]:
        master = self.process.pid
        if self.workers == [master]:  # one process, no gunicorn: it is its own worker
            return {"master": 0.0, "workers": [_pss_mb(master)], "total": _pss_mb(master)}
        workers = [_pss_mb(pid) for pid in self.workers]
        return {
            "master": _pss_mb(master),
            "workers": workers,
            "total": round(_pss_mb(master) + sum(workers), 1),
        }

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=120)


def _pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def memory(workers: int, preload: bool) -> dict[str, Any]:
    server = Server(workers, preload)
    try:
        server.warm_up()
        return {
            "workers": workers,
            "preload": preload,
            "ready_s": round(server.ready_seconds, 2),
            "pss_mb": server.pss_mb(),
        }
    finally:
        server.stop()


def throughput(workers: int, duration: float) -> dict[str, Any]:
    server = Server(workers, preload=True)
    try:
        server.warm_up()
        result = _load(server.port, 32, 1, duration)
        return {"workers": workers, **result}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load phase")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    memory_rows = [memory(n, preload) for n in (1, 2, 4) for preload in (False, True)]
    rounds = []
    for index in range(args.rounds):
        order = (1, 2) if index % 2 == 0 else (2, 1)
        rounds.append({n: throughput(n, args.duration) for n in order})
        print(f"round {index + 1}: {[(n, r['sentences_per_s']) for n, r in rounds[-1].items()]}")

    results = measured_now(
        cpus=os.cpu_count(),
        duration_s=args.duration,
        memory=memory_rows,
        throughput_rounds=rounds,
    )
    report = _report(results)
    write_results(results, report, json_prefix="workers-", markdown="workers.md")
    print(report)


def _report(results: dict[str, Any]) -> str:
    lines = [
        f"Measured {results['when']} on {results['cpus']} CPUs; PSS after 40 warm-up "
        "requests; `--workers 4` runs with `--threads 4` (memory only). An extra worker's "
        "cost is (total with N workers − total with 1) ÷ (N − 1), set against the PSS of "
        "the one worker of the 1-worker server with the same `--preload`.",
        "",
        "| workers | preload | ready s | master PSS MB | PSS MB per worker | total PSS MB "
        "| MB per extra worker | ÷ first worker |",
        "|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    single = {row["preload"]: row["pss_mb"] for row in results["memory"] if row["workers"] == 1}
    for row in results["memory"]:
        pss, n = row["pss_mb"], row["workers"]
        marginal = ratio = "—"
        if n > 1:
            base = single[row["preload"]]
            extra = (pss["total"] - base["total"]) / (n - 1)
            marginal, ratio = f"{extra:.1f}", f"{extra / base['workers'][0]:.2f}"
        lines.append(
            f"| {n} | {'yes' if row['preload'] else 'no'} | {row['ready_s']} "
            f"| {pss['master'] or '—'} | {', '.join(str(v) for v in pss['workers'])} "
            f"| {pss['total']} | {marginal} | {ratio} |"
        )
    lines += [
        "",
        "Throughput, 32 clients × 1 sentence, `--preload`, "
        f"{results['duration_s']:.0f} s per phase:",
        "",
        "| round | --workers 1 sent/s | p50 ms | --workers 2 sent/s | p50 ms | 2 ÷ 1 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for index, round_ in enumerate(results["throughput_rounds"], 1):
        one, two = round_[1], round_[2]
        lines.append(
            f"| {index} | {one['sentences_per_s']} | {one['p50_ms']} | "
            f"{two['sentences_per_s']} | {two['p50_ms']} | "
            f"{two['sentences_per_s'] / one['sentences_per_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
