"""The OpenVINO backend on the real model: its thread budget seen from the OS, the
conversion built once across real processes, ``embedloom variants`` building the
int8 model and the trial then choosing among all of them, and ``--backend
openvino`` through a real server, all against sentence-transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from embedloom.backends.openvino import OpenVinoBackend
from embedloom.store import ModelStore
from embedloom.variants.catalog import Variant, open_variant, unsupported_reason
from tests.helpers import ServerProcess, run_at_once

OPENVINO_FP32 = Variant("openvino", "fp32")
OPENVINO_INT8 = Variant("openvino", "int8")

pytestmark = pytest.mark.skipif(
    unsupported_reason(OPENVINO_FP32, "cpu") is not None,
    reason=f"OpenVINO cannot run here: {unsupported_reason(OPENVINO_FP32, 'cpu')}",
)

# A child process that asks the store for the OpenVINO model, as a starting server
# does, and reports where it found it.
_CONVERT = """
import json, logging, sys
from pathlib import Path
from embedloom.variants.catalog import Variant, openvino_export
from embedloom.store import ModelStore

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
store = ModelStore(Path(sys.argv[2]))
path = openvino_export(Variant("openvino", "fp32"), Path(sys.argv[1]), store)
print(json.dumps({"path": str(path)}))
"""


@pytest.fixture(scope="module")
def store(variants_store: ModelStore) -> ModelStore:
    return variants_store


def _cpu_ticks_by_thread() -> dict[str, int]:
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended while we looked
            continue
        ticks[tid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("threads", [1, 2])
def test_no_more_threads_compute_than_the_budget(
    threads: int, model_dir: Path, store: ModelStore
) -> None:
    # OpenVINO's own thread pool is invisible to us: the OS's per-thread CPU time
    # shows which threads worked while it embedded.
    backend = open_variant(OPENVINO_FP32, model_dir, store, threads=threads, device="cpu")()
    assert backend.compute_threads() == threads
    batch = backend.tokenize(["a sentence of a dozen words about the weather and trains"] * 32)
    backend.embed(batch)  # warm-up: the pool starts its threads
    before = _cpu_ticks_by_thread()
    for _ in range(20):
        backend.embed(batch)
    after = _cpu_ticks_by_thread()
    spent = {tid: after[tid] - before.get(tid, 0) for tid in after}
    total = sum(spent.values())
    assert total > 0
    # A thread computing shares the work; one that only wakes up now and then
    # (a timer, the GC) spends a sliver of it.
    computing = [tid for tid, ticks in spent.items() if ticks > 0.1 * total]
    assert 1 <= len(computing) <= threads, spent


def test_two_processes_asking_at_once_convert_once(tmp_path: Path, model_dir: Path) -> None:
    outputs = run_at_once(_CONVERT, str(model_dir), str(tmp_path))
    paths = {json.loads(out)["path"] for out, _ in outputs}
    assert len(paths) == 1
    logs = "".join(err for _, err in outputs)
    assert logs.count("converted ") == 1, logs
    assert logs.count("embedloom.store built ") == 1, logs
    converted = Path(paths.pop())
    assert not list(converted.parent.glob(".partial-*"))
    # Loading it needs neither torch nor sentence-transformers: it is all there.
    assert {"model.xml", "model.bin", "tokenizer.json", "embedloom.json"} <= {
        p.name for p in converted.iterdir()
    }


def test_a_new_input_shape_does_not_change_the_vectors(model_dir: Path, store: ModelStore) -> None:
    backend = open_variant(OPENVINO_FP32, model_dir, store, threads=1, device="cpu")()
    assert isinstance(backend, OpenVinoBackend)
    texts = ["short one", "a somewhat longer sentence with more words in it than the first"]
    together = backend.embed(backend.tokenize(texts))
    alone = np.vstack([backend.embed(backend.tokenize([t])) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def _embedloom(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("embedloom")), *args, "--home", str(home)]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.timeout(600)  # the build is half a minute alone; minutes on a busy machine
def test_variants_build_makes_int8_a_candidate_that_passes_the_gate(store: ModelStore) -> None:
    from embedloom.backends.openvino_export import int8_missing

    if (missing := int8_missing()) is not None:
        pytest.skip(missing)
    # (That a start without --build skips it as "not built yet" is test_choice's.)
    args = ("variants", "--backend", "openvino", "--dtype", "auto", "--log-level", "info")
    built = _embedloom(*args, "--build", home=store.home)
    assert built.returncode == 0, built.stderr
    assert "building openvino/int8" in built.stderr
    rows = [line.strip().lstrip("* ") for line in built.stdout.splitlines()]
    int8_line = next(row for row in rows if row.startswith("openvino/int8 "))
    assert "refused" not in int8_line
    assert "mean_cosine 0.999" in int8_line or "mean_cosine 1.000" in int8_line
    # Against sentence-transformers itself it is test_variants' (each variant).


def test_a_server_on_openvino_answers_like_sentence_transformers(
    store: ModelStore, reference_model: Any
) -> None:
    with ServerProcess.start(
        "--backend", "openvino", "--dtype", "fp32", "--home", str(store.home)
    ) as server:
        info = httpx.get(f"{server.url}/info").json()
        texts = ["How do I reset my password?", "The striker scored twice."]
        embedded = httpx.post(f"{server.url}/v1/embeddings", json={"input": texts}, timeout=30)
    assert embedded.status_code == 200, embedded.text
    vectors = np.array([row["embedding"] for row in embedded.json()["data"]])
    assert (info["backend"], info["model_dtype"]) == ("openvino", "float32")
    assert info["backend_choice"]["variant"] == "openvino/fp32"
    expected = reference_model.encode(texts)  # type: ignore[attr-defined]
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
