"""``embed --ray`` on a multi-node Ray cluster on this machine: a head and a worker
node (``ray.cluster_utils.Cluster``: separate raylets, one CPU each), so the
actors really land on different nodes.

Every input format through one job (a directory holding one file of each),
equal to the single-machine readers' rows and the embedder's vectors; parts
written where they were computed, by two nodes; nothing but metadata back to
the driver; bad rows rejected as the single-machine job does; and a job whose
driver is SIGKILLed part-way resumed to the same result, computing only the
missing blocks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.model, pytest.mark.xdist_group("ray")]

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed")

from tests.helpers import sample_texts  # noqa: E402

EMBEDLOOM = str(Path(sys.executable).with_name("embedloom"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
MANIFEST = "_embedloom_manifest.json"


@dataclass
class Nodes:
    cluster: Any  # ray.cluster_utils.Cluster
    address: str


@pytest.fixture(scope="module")
def cluster() -> Iterator[Nodes]:
    """A head and a worker node of one CPU each (a third only costs CI time: two
    nodes are enough to see parts written by both and to lose one)."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_AUTH_MODE"] = "disabled"
    # Ray's sessions and its "current cluster" file in a directory of the test's own,
    # not /tmp/ray; short, since Unix socket paths inside it are limited to 107 bytes.
    sessions = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = sessions
    # The default object store takes 30% of RAM per node.
    node = {"num_cpus": 1, "object_store_memory": 128 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        yield Nodes(cluster, str(cluster.address))
    finally:
        cluster.shutdown()
        if before is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = before
        shutil.rmtree(sessions, ignore_errors=True)


@pytest.fixture(scope="module")
def nodes(cluster: Nodes) -> str:
    """The cluster's address."""
    return cluster.address


@pytest.fixture(scope="module")
def embedder() -> Iterator[Any]:
    from embedloom import Embedder

    with Embedder() as embedder:
        yield embedder


def embed_on(address: str, source: Path, output: Path, *flags: str) -> str:
    done = subprocess.run(
        [EMBEDLOOM, "embed", str(source), "-o", str(output), "--ray", address, *flags],
        env=ENV,
        timeout=600,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def read_output(output: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted(output.glob("part-*.parquet"))
    tables = [pq.read_table(part) for part in parts]
    # Parquet inputs' columns ride along in their parts only.
    return pa.concat_tables(tables, promote_options="default").to_pydict()


def test_every_format_in_one_job_across_nodes_with_only_metadata_to_the_driver(
    nodes: str, embedder: Any, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = sample_texts(240, seed=52)
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.txt").write_text("".join(t + "\n" for t in texts[:60]))
    (source / "b.jsonl").write_text(
        "".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts[60:120]))
    )
    (source / "c.csv").write_text(
        "n,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts[120:180]))
    )
    pq.write_table(
        pa.table({"text": texts[180:], "key": [f"k{i}" for i in range(60)]}),
        source / "d.parquet",
    )
    output = tmp_path / "out"
    report = embed_on(nodes, source, output, "--chunk-size", "32", "--ray-actors", "2")
    assert "embedded 240 rows into 8 parts on 2 node(s)" in report
    got = read_output(output)
    assert got["row"] == list(range(240))
    np.testing.assert_allclose(
        np.array(got["embedding"], dtype=np.float32), embedder.embed(texts), atol=2e-6
    )
    assert got["key"] == [None] * 180 + [f"k{i}" for i in range(60)]
    assert got["text"][180:] == texts[180:]
    manifest = json.loads((output / MANIFEST).read_text())
    assert manifest["rows"] == 240
    assert [part["name"] for part in manifest["parts"]] == [
        f"part-{i:06d}.parquet" for i in range(8)
    ]
    assert len({part["node"] for part in manifest["parts"]}) == 2
    # What came back to the driver: a few numbers per block, never a vector (one
    # block's vectors are 32 × 384 float32s, 49 KB).
    [returned] = map(int, re.findall(r"(\d+) bytes of block records back to the driver", report))
    assert 0 < returned < 8 * 200
    assert not list(output.glob(".*.tmp"))


def test_bad_rows_stop_the_job_or_go_to_rejects_as_on_one_machine(
    nodes: str, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"text": t, "id": f"r{i}"}) for i, t in enumerate(sample_texts(40))]
    lines[7] = "{not json"
    lines[33] = json.dumps({"text": "", "id": "r33"})
    source.write_text("\n".join(lines) + "\n")
    stopped = subprocess.run(
        [EMBEDLOOM, "embed", str(source), "-o", str(tmp_path / "a"), "--ray", nodes],
        env=ENV,
        timeout=600,
        capture_output=True,
        text=True,
    )
    assert stopped.returncode == 2
    [message] = [line for line in stopped.stderr.splitlines() if line.startswith("embedloom: ")]
    assert "in.jsonl:8: not valid JSON" in message
    assert "--on-error skip" in message
    assert "Traceback" not in stopped.stderr
    output = tmp_path / "b"
    flags = ("--id-field", "id", "--on-error", "skip", "--chunk-size", "32")
    assert "2 rows rejected" in embed_on(nodes, source, output, *flags)
    got = read_output(output)
    assert got["row"] == [i for i in range(40) if i not in (7, 33)]
    assert got["id"] == [f"r{i}" for i in got["row"]]
    rejects = [
        json.loads(line)
        for path in sorted(output.glob("rejects-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert [r["row"] for r in rejects] == [7, 33]


def test_a_killed_driver_resumes_computing_only_the_missing_blocks(
    nodes: str, embedder: Any, tmp_path: Path
) -> None:
    texts = sample_texts(320, seed=61)
    source = tmp_path / "in.txt"
    source.write_text("".join(t + "\n" for t in texts))
    output = tmp_path / "out"
    flags = ["--chunk-size", "32", "--ray-actors", "2"]
    command = [EMBEDLOOM, "embed", str(source), "-o", str(output), "--ray", nodes, *flags]
    # Killed once its second block is written, by its own log line: some parts are
    # there, most are not.
    driver = kill_after_block(command, 2, lambda d: d.send_signal(signal.SIGKILL))
    driver.wait()
    assert driver.stderr is not None
    driver.stderr.close()
    written_before = len(list(output.glob("part-*.parquet")))
    assert written_before < 10
    assert not (output / MANIFEST).exists()
    report = embed_on(nodes, source, output, *flags, "--resume")
    kept = int(report.split(", ")[-1].split()[0])
    assert kept >= written_before
    assert "embedded 320 rows into 10 parts" in report
    got = read_output(output)
    assert got["row"] == list(range(320))
    np.testing.assert_allclose(
        np.array(got["embedding"], dtype=np.float32), embedder.embed(texts), atol=2e-6
    )


def kill_after_block(command: list[str], block: int, kill: Any) -> subprocess.Popen[str]:
    """Start ``command`` (a driver) and call ``kill(driver)`` once it has logged its
    ``block``-th block written."""
    driver = subprocess.Popen(command, env=ENV, stderr=subprocess.PIPE, text=True)
    assert driver.stderr is not None
    for line in driver.stderr:
        if f"written ({block} of " in line:
            kill(driver)
            return driver
    raise AssertionError(f"the driver ended before block {block} (status {driver.wait()})")


def test_a_node_lost_mid_job_costs_nothing_the_job_completes_exactly(
    cluster: Nodes, embedder: Any, tmp_path: Path
) -> None:
    """Last in the module: it takes a node away."""
    import pyarrow.parquet as pq

    texts = sample_texts(320, seed=67)
    source = tmp_path / "in.txt"
    source.write_text("".join(t + "\n" for t in texts))
    output = tmp_path / "out"
    command = [
        EMBEDLOOM, "embed", str(source), "-o", str(output), "--ray", cluster.address,
        "--chunk-size", "32", "--ray-actors", "2",
    ]  # fmt: skip
    lost: list[str] = []

    def lose_a_worker_node(driver: subprocess.Popen[str]) -> None:
        writers = {
            (pq.read_metadata(part).metadata or {}).get(b"embedloom.node", b"").decode()
            for part in output.glob("part-*.parquet")
        }
        [node] = [n for n in cluster.cluster.worker_nodes if n.node_id in writers][:1]
        cluster.cluster.remove_node(node, allow_graceful=False)
        lost.append(node.node_id)

    driver = kill_after_block(command, 2, lose_a_worker_node)
    assert driver.stderr is not None
    rest = driver.stderr.read()
    driver.stderr.close()
    assert driver.wait() == 0, rest[-3000:]
    assert "its actor was lost" in rest  # the loss was met, and the block run again
    got = read_output(output)
    assert got["row"] == list(range(320))  # nothing missing, nothing twice
    np.testing.assert_allclose(
        np.array(got["embedding"], dtype=np.float32), embedder.embed(texts), atol=2e-6
    )
    manifest = json.loads((output / MANIFEST).read_text())
    nodes_after = {part["node"] for part in manifest["parts"][-3:]}
    assert lost[0] not in nodes_after
