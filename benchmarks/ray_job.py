"""``embed --ray`` on 1, 2 and 3 local Ray nodes: rows/s, and the driver's peak RSS as
the rows grow.

    .venv/bin/python benchmarks/ray_job.py --rows 10000 --big 100000

Each setup is a fresh ``ray.cluster_utils.Cluster`` on this machine (separate
raylets, as separate machines would run them): 1 node × 2 CPUs, 2 nodes × 1
CPU (the same CPUs split), 3 nodes × 1 CPU (more CPUs than this machine has
cores: it shows Ray's overhead, not a gain). The job is the real command in
its own process (the driver), two actors per 2 CPUs (0.5 CPU each, as the
tests), one actor per further CPU; its peak RSS comes from the kernel
(``wait4``). ``--big`` repeats the 2-node setup with that many rows: the
driver's RSS must stay flat, since no vector passes through it. Writes
``benchmarks/results/ray-job.{md,json}`` and the measured section of
docs/scale-out.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from doc_sections import write_between_markers  # noqa: E402
from record import measured_now, write_results  # noqa: E402
from workload import sentences  # noqa: E402

EMBEDLOOM = str(Path(sys.executable).with_name("embedloom"))
SETUPS = (("1 node × 2 CPUs", 1, 2), ("2 nodes × 1 CPU", 2, 1), ("3 nodes × 1 CPU", 3, 1))


def run_job(nodes: int, cpus: int, rows: int, scratch: Path) -> dict[str, Any]:
    from ray.cluster_utils import Cluster

    sessions = Path(tempfile.mkdtemp(prefix="rayb-", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(sessions)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    node = {"num_cpus": cpus, "object_store_memory": 256 * 2**20}
    started = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        ray_start = time.perf_counter() - started
        source = scratch / f"in-{rows}.txt"
        if not source.exists():
            texts = sentences(4096)
            source.write_text("".join(texts[i % len(texts)] + "\n" for i in range(rows)))
        output = scratch / f"out-{nodes}-{rows}"
        actors = nodes * cpus  # 0.5 CPU each: two per CPU would leave none for counting
        command = [
            EMBEDLOOM, "embed", str(source), "-o", str(output), "--overwrite",
            "--ray", str(cluster.address), "--ray-actors", str(actors), "--ray-cpus", "0.5",
            "--chunk-size", "256", "--quiet",
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        began = time.perf_counter()
        driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(driver.pid, 0)
        seconds = time.perf_counter() - began
        assert driver.stdout is not None
        line = driver.stdout.read()
        driver.stdout.close()
        assert os.waitstatus_to_exitcode(status) == 0, line
        returned = int(re.findall(r"(\d+) bytes of block records", line)[0])
        node_count = int(re.findall(r"on (\d+) node", line)[0])
        shutil.rmtree(output)
        return {
            "nodes": nodes,
            "cpus_per_node": cpus,
            "rows": rows,
            "actors": actors,
            "ray_start_s": round(ray_start, 1),
            "job_s": round(seconds, 1),
            "rows_per_s": round(rows / seconds, 1),
            "driver_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "bytes_to_driver": returned,
            "nodes_that_wrote": node_count,
        }
    finally:
        cluster.shutdown()
        shutil.rmtree(sessions, ignore_errors=True)


def report(results: dict[str, Any]) -> str:
    lines = [
        "`EMBEDLOOM_BACKEND=torch EMBEDLOOM_DTYPE=fp32 .venv/bin/python benchmarks/ray_job.py "
        f"--rows {results['rows']} --big "
        f"{results['big']}` on {results['when']}, {results['machine']}: `embed --ray` "
        "on local Ray nodes (each a separate raylet), a .txt of generated sentences "
        "(mean ~30 tokens), chunks of 256 rows, torch fp32 actors of 0.5 CPU.",
        "",
        "| setup | rows | actors | rows/s (whole job) | job s | driver peak RSS MB | "
        "bytes back to the driver | nodes that wrote |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in results["runs"]:
        lines.append(
            f"| {run['setup']} | {run['rows']:,} | {run['actors']} | {run['rows_per_s']} | "
            f"{run['job_s']} | {run['driver_peak_rss_mb']} | {run['bytes_to_driver']:,} | "
            f"{run['nodes_that_wrote']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=100_000)
    args = parser.parse_args()
    results = measured_now(rows=args.rows, big=args.big, runs=[])
    with tempfile.TemporaryDirectory() as scratch:
        for setup, nodes, cpus in SETUPS:
            run = run_job(nodes, cpus, args.rows, Path(scratch))
            results["runs"].append({"setup": setup, **run})
            print(run, flush=True)
        if args.big:
            run = run_job(2, 1, args.big, Path(scratch))
            results["runs"].append({"setup": "2 nodes × 1 CPU", **run})
            print(run, flush=True)
    text = report(results)
    write_results(results, text, json_prefix="ray-job-", markdown="ray-job.md")
    write_between_markers(ROOT_DOC, "ray-job", text)
    print(text)


ROOT_DOC = HERE.parent / "docs" / "scale-out.md"

if __name__ == "__main__":
    main()
