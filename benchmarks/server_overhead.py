"""The server's CPU per request outside the model, under load, profiled with py-spy.

    .venv/bin/python benchmarks/server_overhead.py [--backend B --dtype D] [--duration 15]

Starts ``embedloom serve`` (``auto`` unless told), puts 32 closed-loop clients of
one sentence on it (the load generator in its own process), and meanwhile:

- reads the server process's CPU time (all its threads, ``/proc/<pid>/stat``)
  before and after the window: CPU per request;
- samples it with ``py-spy record`` (100 Hz, every thread that is on the CPU,
  native frames off): the share of samples inside the backend's ``embed`` is
  the model's; the rest is HTTP, parsing, validation, scheduling, tokenising
  and encoding the answer.

CPU per request outside the model = CPU per request × (1 − the model's share).
Writes ``benchmarks/results/server_overhead.md`` and prints it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HOME = RESULTS / ".home"

sys.path.insert(0, str(HERE))
from run import _free_port, _load, _with_server, serve_command  # noqa: E402


def _cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time of process ``pid``, or of its thread ``thread`` alone."""
    where = f"/proc/{pid}/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat"
    fields = Path(where).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_pid(port: int) -> int:
    # The server is the process listening on the port: our child's child at most.
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True)
    for part in out.stdout.split("pid=")[1:]:
        return int(part.split(",")[0])
    raise RuntimeError(f"no process listens on {port}")


def measure(flags: list[str], duration: float) -> dict[str, Any]:
    port = _free_port()
    command = serve_command(port, "--home", str(HOME), *flags)

    def body() -> dict[str, Any]:
        _load(port, 4, 1, 2.0)  # warm up connections and the allocator
        pid = _server_pid(port)
        with tempfile.TemporaryDirectory() as scratch:
            folded = Path(scratch) / "profile.txt"
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    "100",
                    "--duration",
                    str(int(duration)),
                    "--format",
                    "raw",
                    "--output",
                    str(folded),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            before = _cpu_seconds(pid)
            # The main thread runs the event loop: HTTP, routes, validation, encoding
            # the answer, and the engine's bookkeeping, all outside the model.
            loop_before = _cpu_seconds(pid, pid)
            result: dict[str, Any] = {}
            loader = threading.Thread(
                target=lambda: result.update(_load(port, 32, 1, duration)), daemon=True
            )
            loader.start()
            loader.join()
            spent = _cpu_seconds(pid) - before
            loop_spent = _cpu_seconds(pid, pid) - loop_before
            spy.wait(timeout=duration + 60)
            raw = folded.read_text() if folded.exists() else ""
            (RESULTS / "server_overhead.folded").write_text(raw)
            samples = _classify(raw)
            loop_samples = _classify(raw, loop_only=True)
        requests = result["requests"]
        total = sum(samples.values()) or 1
        model_share = samples["model"] / total
        return {
            "load": result,
            "server_cpu_s": round(spent, 2),
            "cpu_ms_per_request": round(1000 * spent / requests, 3),
            "event_loop_us_per_request": round(1e6 * loop_spent / requests),
            "samples": dict(samples),
            "event_loop_samples": dict(loop_samples),
            "model_share": round(model_share, 3),
            "outside_model_us_per_request": round(1e6 * spent / requests * (1 - model_share)),
        }

    return dict(_with_server(command, port, body))


# Where a sample is, by the innermost frame that names a part of the server (every
# frame on the event loop sits under uvicorn's, so the outer frames say nothing).
_PARTS = (
    ("model", ("backends/torch.py", "backends/onnx.py", "backends/openvino.py")),
    ("padding and masks", ("backends/text.py:collate", "collate (")),
    ("tokenising", ("backends/text.py", "tokenizers")),
    ("encoding the answer", ("orjson", "base64", "encode_vectors", "render", "JSONResponse")),
    ("scheduling and threads", ("engine/", "sharing/", "batching.py", "offload.py", "threads.py")),
    ("routes and validation", ("server/", "pydantic", "fastapi", "starlette")),
    ("HTTP", ("uvicorn", "httptools", "h11", "asyncio/streams", "asyncio/selector")),
)


def _classify(folded: str, *, loop_only: bool = False) -> collections.Counter[str]:
    """Samples by the part of the server their innermost recognised frame is in
    (``loop_only``: the main thread's alone, the one thread not started by
    ``threading``: the event loop's)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in folded.splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        if loop_only and "_bootstrap (threading.py" in stack:
            continue
        where = "other (the event loop itself, asyncio, GC)"
        for frame in reversed(stack.split(";")):
            found = next((part for part, marks in _PARTS if any(m in frame for m in marks)), None)
            if found is not None:
                where = found
                break
        counts[where] += int(number)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--duration", type=float, default=15.0)
    args = parser.parse_args()
    figures = measure(["--backend", args.backend, "--dtype", args.dtype], args.duration)
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    total = sum(figures["samples"].values()) or 1
    loop_total = sum(figures["event_loop_samples"].values()) or 1
    lines = [
        "# The server's CPU per request outside the model",
        "",
        f"{when} · `benchmarks/server_overhead.py --backend {args.backend} --dtype "
        f"{args.dtype} --duration {args.duration:g}` · 32 clients × 1 sentence",
        "",
        f"- {figures['load']['requests']} requests, {figures['load']['sentences_per_s']} "
        f"sentences/s, p50 {figures['load'].get('p50_ms')} ms, p99 "
        f"{figures['load'].get('p99_ms')} ms; the load generator (`embedloom bench`, its "
        f"own process) used {figures['load'].get('client_cores')} of a core",
        f"- server CPU: {figures['server_cpu_s']} s, {figures['cpu_ms_per_request']} ms per "
        f"request; the event loop's thread alone: {figures['event_loop_us_per_request']} µs per "
        "request",
        f"- py-spy samples in the model: {figures['model_share']:.0%}; outside it: "
        f"**{figures['outside_model_us_per_request']} µs of CPU per request**",
        "",
        "| where | share of samples | of the event loop's thread's samples |",
        "|---|---|---|",
        *(
            f"| {where} | {count / total:.1%} | "
            f"{figures['event_loop_samples'].get(where, 0) / loop_total:.1%} |"
            for where, count in collections.Counter(figures["samples"]).most_common()
        ),
        "",
    ]
    report = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "server_overhead.md").write_text(report)
    (RESULTS / "server_overhead.json").write_text(json.dumps(figures, indent=1))
    print(report)


if __name__ == "__main__":
    main()
