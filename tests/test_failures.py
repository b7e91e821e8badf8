"""The four failures embedloom exists for, each reproduced beside embedloom's answer.

``pytest -m seeds`` runs exactly these. Every pair runs on the same input on
the same machine; each naive test asserts the failure it reproduces, so that
when a library fixes one, this module says so (and docs/failures.md is
updated), and each embedloom test asserts survival. docs/failures.md tells the
four stories with what these print here.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedloom.offload import iterate_in_thread, run_in_thread
from tests.helpers import ServerProcess, sample_texts

pytestmark = pytest.mark.seeds


def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (its own thread pools and memory) and
    return the JSON object it prints last."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=170,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


# -- 1. A model that cannot be shared between request threads ------------------------
#
# In Python the rust-bert failure shows up twice. A Hugging Face fast tokenizer
# holds its truncation and padding as state of the one Rust object: threads that
# share it and ask for different settings get each other's. And request threads
# that call one torch model at once each bring an OpenMP team as big as the
# machine: busy threads far beyond the cores.

_SHARED_TOKENIZER = """
import json, sys, threading
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
texts = [f"sentence {i} about rivers and stones and clouds " * 12 for i in range(64)]
barrier = threading.Barrier(8)
calls, wrong, errors = [0], [0], []

def request(thread):
    length = 16 + 16 * thread  # each request thread asks for its own truncation
    barrier.wait()
    for _ in range(40):
        try:
            ids = tokenizer(texts, truncation=True, max_length=length)["input_ids"]
        except RuntimeError as exc:  # "Already borrowed", in older tokenizers
            errors.append(str(exc))
            continue
        calls[0] += 1
        wrong[0] += max(len(row) for row in ids) != length

threads = [threading.Thread(target=request, args=(t,)) for t in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"calls": calls[0], "wrong": wrong[0], "errors": len(errors)}))
"""


def test_naive_a_shared_fast_tokenizer_mixes_up_its_request_threads(model_dir: Path) -> None:
    seen = run_python(_SHARED_TOKENIZER, str(model_dir))
    print(f"shared tokenizer, 8 threads: {seen}")
    # Older tokenizers raised "Already borrowed"; 0.23 cuts inputs at another
    # thread's length without a word. Either is the failure.
    assert seen["errors"] + seen["wrong"] > 0, seen


def test_embedloom_request_threads_share_one_embedder_and_each_gets_its_own_vectors(
    reference_encode: Any,
) -> None:
    from embedloom import Embedder

    # Short texts and texts past the model's 256 tokens, which must be cut at 256.
    texts = [*sample_texts(48, seed=21), *(f"{i} " + "river stone " * 200 for i in range(16))]
    expected = reference_encode(texts)
    barrier = threading.Barrier(8)
    results: dict[int, np.ndarray] = {}
    with Embedder() as embedder:

        def request(thread: int) -> None:
            barrier.wait()
            results[thread] = embedder.embed(texts[thread::8])

        threads = [threading.Thread(target=request, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert embedder.statistics().requests_failed == 0
    for thread, vectors in results.items():
        np.testing.assert_allclose(vectors, expected[thread::8], atol=1e-5)
    print(f"one Embedder, 8 threads: {len(results)} of 8 got sentence-transformers' vectors")


_BUSY_THREADS = """
import json, os, sys, threading
from pathlib import Path

def cpu_seconds_by_thread():
    seconds = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[task.name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds

texts = [f"sentence {i} about rivers and stones and clouds " * 4 for i in range(128)]
if sys.argv[1] == "naive":
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(sys.argv[2], device="cpu")
    embed = lambda chunk: model.encode(chunk, batch_size=32)
else:
    from embedloom import Embedder
    embedder = Embedder().__enter__()
    embed = embedder.embed
embed(texts[:8])  # warm: pools and first-use paths exist before counting
start, finished, release = threading.Barrier(8), threading.Barrier(9), threading.Event()

def request(thread):
    start.wait()
    for _ in range(2):
        embed(texts[thread::8])
    finished.wait()  # stay alive until counted: an ended thread leaves /proc/self/task
    release.wait()

threads = [threading.Thread(target=request, args=(t,)) for t in range(8)]
before = cpu_seconds_by_thread()
for thread in threads:
    thread.start()
finished.wait()
after = cpu_seconds_by_thread()
release.set()
used = [after[t] - before.get(t, 0.0) for t in after]
total = sum(used)
# Busy: a thread that did at least 2% of the process's work in the window.
busy = sorted((u for u in used if u >= 0.02 * total), reverse=True)
print(json.dumps({"busy": len(busy), "seconds": [round(u, 2) for u in busy], "total": total}))
for thread in threads:
    thread.join()
if sys.argv[1] != "naive":
    # Closed, not left to interpreter exit: native inference threads still alive
    # while the interpreter tears down can abort it ("terminate called without an
    # active exception", seen once on a busy machine).
    embedder.close()
"""


def test_naive_request_threads_calling_one_torch_model_oversubscribe_the_cores(
    model_dir: Path,
) -> None:
    from embedloom.threads import usable_cores

    cores = usable_cores().usable
    seen = run_python(_BUSY_THREADS, "naive", str(model_dir))
    print(f"8 threads x one SentenceTransformer, {cores} cores: {seen}")
    # Eight request threads, each with an OpenMP team the size of the machine.
    assert seen["busy"] > 2 * cores, seen


def test_embedloom_keeps_busy_threads_within_its_budget_under_the_same_callers() -> None:
    from embedloom.threads import usable_cores

    cores = usable_cores().usable
    seen = run_python(_BUSY_THREADS, "embedloom")
    print(f"8 threads x one Embedder, {cores} cores: {seen}")
    # The inference threads (the budget: the cores), and at most the event loop
    # or a tokenizing thread beside them.
    assert seen["busy"] <= cores + 1, seen


# -- 2. Many worker processes loading the same model at once -------------------------
#
# sentence-transformers 2.2.2 behind four gunicorn workers: each downloaded the
# model into the shared Hugging Face cache at once and they raced on its lock
# files (FileNotFoundError). Today's huggingface_hub locks each file and that
# race is gone (the naive test below says so, and fails the day it comes back
# as something else); what is left of the naive pattern is its cost: every
# worker loads a copy of its own.

_HUB_REPO = "acme/minilm"

_LOAD_WITH_SENTENCE_TRANSFORMERS = """
import json
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("acme/minilm", device="cpu")
print(json.dumps({"dimensions": model.get_sentence_embedding_dimension()}))
"""

_LOAD_WITH_THE_STORE = """
import hashlib, json, os
from embedloom.config import Settings
from embedloom.store import ModelStore, resolve_model
from safetensors.numpy import load_file

settings = Settings.from_env(os.environ)
model = resolve_model("acme/minilm", store=ModelStore.for_settings(settings))
tensors = load_file(str(model.path / "model.safetensors"))
digest = hashlib.sha256(b"".join(tensors[name].tobytes() for name in sorted(tensors)))
print(json.dumps({"path": str(model.path), "weights": digest.hexdigest()}))
"""


def _load_at_once(
    code: str, count: int, model_dir: Path, home: Path
) -> tuple[list[subprocess.CompletedProcess[str]], dict[tuple[str, str], int]]:
    """``count`` processes run ``code`` at the same moment against the fake hub,
    with one shared, empty Hugging Face cache; their outcomes, and the hub's
    downloads per file."""
    from tests.fake_hub import FakeHub

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(home / "hf"),
        "EMBEDLOOM_HOME": str(home / "embedloom"),
    }
    with FakeHub({_HUB_REPO: model_dir}) as hub:
        # Slow enough that all of them are downloading at the same moment.
        hub.behaviour.seconds_per_chunk = 0.002
        children = [
            subprocess.Popen(
                [sys.executable, "-c", code],
                env={**env, "HF_ENDPOINT": hub.url},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        done = []
        for child in children:
            out, err = child.communicate(timeout=170)
            done.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))
        return done, dict(hub.downloads())


def test_naive_four_workers_loading_from_the_hub_at_once_no_longer_race(
    model_dir: Path, tmp_path: Path
) -> None:
    done, downloads = _load_at_once(_LOAD_WITH_SENTENCE_TRANSFORMERS, 4, model_dir, tmp_path)
    failures = [c.stderr.strip().splitlines()[-1] for c in done if c.returncode != 0]
    print(f"4 x SentenceTransformer(hub id) at once: failures {failures}, downloads {downloads}")
    # The 2.2.2 failure was FileNotFoundError on a lock file. huggingface_hub now
    # takes a lock per file: every worker loads, and each file is fetched once.
    assert failures == [], failures
    assert set(downloads.values()) == {1}, downloads


def test_embedloom_four_processes_at_once_fetch_each_file_once_through_the_store(
    model_dir: Path, tmp_path: Path
) -> None:
    done, downloads = _load_at_once(_LOAD_WITH_THE_STORE, 4, model_dir, tmp_path)
    results = []
    for child in done:
        assert child.returncode == 0, child.stderr
        results.append(json.loads(child.stdout))
    print(f"4 x resolve_model(hub id) at once: downloads {downloads}")
    assert len({r["path"] for r in results}) == 1
    assert len({r["weights"] for r in results}) == 1
    assert set(downloads.values()) == {1}, downloads
    files = {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()}
    assert {name for _, name in downloads} == files - {".gitattributes"}
    repo = tmp_path / "embedloom" / "models" / "acme--minilm"
    assert list(repo.glob(".partial-*")) == []


def _pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no Pss for {pid}")


def _pss_per_worker(*flags: str) -> float:
    """Mean PSS of the two workers of ``serve --workers 2 [flags]``, once each has
    served a request."""
    import httpx

    with ServerProcess.start("--workers", "2", *flags) as server:
        workers = server.engine_pids(2)
        for _ in range(8):
            httpx.post(f"{server.url}/embed", json={"inputs": "warm"}, timeout=60)
        pss = [_pss_mb(pid) for pid in workers]
        assert server.terminate() == 0
    return sum(pss) / len(pss)


@pytest.fixture(scope="module")
def worker_pss() -> dict[str, float]:
    """PSS per worker of two-worker servers, without and with ``--preload``."""
    pss = {"alone": _pss_per_worker(), "shared": _pss_per_worker("--preload")}
    print(f"PSS MB per worker of --workers 2, without / with --preload: {pss}")
    return pss


def test_naive_workers_without_preload_each_carry_a_model_of_their_own(
    worker_pss: dict[str, float],
) -> None:
    # gunicorn's default, and the usual remedy for the race: every worker loads
    # the model, torch's heap and the code for itself.
    assert worker_pss["alone"] > 250, worker_pss


def test_embedloom_preloaded_workers_share_the_model_copy_on_write(
    worker_pss: dict[str, float],
) -> None:
    # Measured 0.42 here (benchmarks/workers.py); the margin is wide on purpose.
    assert worker_pss["shared"] < 0.7 * worker_pss["alone"], worker_pss


# -- 3. Work handed to a background thread loses its request's context ---------------

_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="unknown")


async def test_naive_run_in_executor_loses_the_request_context() -> None:
    _tenant.set("acme")
    with ThreadPoolExecutor(max_workers=1) as plain:
        seen = await asyncio.get_running_loop().run_in_executor(plain, _tenant.get)
    assert seen == "unknown"  # Cog's "No scope available"


async def test_embedloom_run_in_thread_keeps_the_request_context() -> None:
    _tenant.set("acme")
    assert await run_in_thread(_tenant.get) == "acme"


def _tenants() -> Iterator[str]:
    for _ in range(3):
        yield _tenant.get()


async def test_naive_a_generator_stepped_through_run_in_executor_loses_the_context() -> None:
    _tenant.set("acme")
    loop = asyncio.get_running_loop()
    generator = _tenants()
    with ThreadPoolExecutor(max_workers=1) as plain:
        seen = [await loop.run_in_executor(plain, next, generator) for _ in range(3)]
    assert seen == ["unknown"] * 3


async def test_embedloom_iterate_in_thread_keeps_the_context() -> None:
    _tenant.set("acme")
    async with iterate_in_thread(_tenants) as items:
        assert [item async for item in items] == ["acme"] * 3


_ROWS = 10_000


def _rows(produced: list[int]) -> Iterator[bytes]:
    for row in range(_ROWS):
        produced.append(row)
        yield b"x" * 1024


async def test_naive_a_producer_thread_outlives_its_consumer_into_an_unbounded_queue() -> None:
    """The hand-rolled bridge: a thread fills a queue.Queue() the consumer reads.
    The consumer leaves after three rows; the thread goes on to the end, and
    everything it made waits in the queue for no one."""
    produced: list[int] = []
    rows: queue.Queue[bytes] = queue.Queue()
    producer = threading.Thread(target=lambda: [rows.put(r) for r in _rows(produced)])
    producer.start()
    for _ in range(3):
        await run_in_thread(rows.get)
    # The consumer has gone. The producer does not know.
    await run_in_thread(producer.join)
    print(f"hand-rolled bridge, left after 3: produced {len(produced)}, queued {rows.qsize()}")
    assert len(produced) == _ROWS
    assert rows.qsize() == _ROWS - 3


async def test_embedloom_iterate_in_thread_stops_the_producer_when_the_consumer_leaves() -> None:
    produced: list[int] = []
    before = threading.active_count()
    async with iterate_in_thread(_rows, produced, max_buffer=8) as rows:
        for _ in range(3):
            await rows.__anext__()
    print(f"iterate_in_thread, consumer left after 3: produced {len(produced)}")
    # Leaving the block stopped the generator: at most the buffer ahead, thread gone.
    assert len(produced) <= 3 + 8 + 1
    assert threading.active_count() == before


# -- 4. Parallel batch work whose memory explodes ------------------------------------
#
# rayon's nested pools under work stealing kept starting items while earlier
# ones waited. Python's ThreadPoolExecutor.map does the same by design: it
# submits every item at once, so results pile up whenever the workers outrun
# the consumer. Both runs below get the same input (400 items of 8 MB, 3.2 GB in
# all), the same consumer (it hashes each item, slower than four workers make
# them) and the same address-space limit (RLIMIT_AS).

_LIMITED_MAP = """
import hashlib, json, resource, sys
from concurrent.futures import ThreadPoolExecutor

limit = int(sys.argv[2]) << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
ITEMS, SIZE = 400, 8 << 20

def make(item):
    return bytearray(b"x") * SIZE  # every page touched

def consume(results):
    hashed = 0
    for buffer in results:
        hashlib.sha256(buffer).digest()
        hashed += 1
    return hashed

try:
    if sys.argv[1] == "naive":
        with ThreadPoolExecutor(max_workers=4) as pool:
            hashed = consume(pool.map(make, range(ITEMS)))
    else:
        from embedloom.parallel import bounded_map
        hashed = consume(bounded_map(
            lambda chunk: [make(i) for i in chunk], range(ITEMS),
            workers=4, max_in_flight=4, chunk_size=1))
    outcome = "finished"
except MemoryError:
    hashed, outcome = None, "MemoryError"
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, from the test runner.
status = open("/proc/self/status").read()
peak = int(status.split("VmHWM:")[1].split()[0]) // 1024
print(json.dumps({"outcome": outcome, "hashed": hashed, "peak_rss_mb": peak}))
"""
# Enough for the interpreter, numpy and a few dozen items; a tenth of the input.
_ADDRESS_SPACE_MB = 1536


# A fixed mmap threshold: each 8 MB item is its own mapping, handed back to the
# kernel when freed, so peak memory counts live items, not the allocator's hoard.
_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def test_naive_thread_pool_map_runs_out_of_memory_on_a_large_input() -> None:
    seen = run_python(_LIMITED_MAP, "naive", str(_ADDRESS_SPACE_MB), env=_ALLOCATOR)
    print(f"ThreadPoolExecutor.map, 400 x 8 MB, {_ADDRESS_SPACE_MB} MB limit: {seen}")
    assert seen["outcome"] == "MemoryError", seen


def test_embedloom_bounded_map_finishes_the_same_input_under_the_same_limit() -> None:
    seen = run_python(_LIMITED_MAP, "embedloom", str(_ADDRESS_SPACE_MB), env=_ALLOCATOR)
    print(f"bounded_map, 400 x 8 MB, {_ADDRESS_SPACE_MB} MB limit: {seen}")
    assert seen == {"outcome": "finished", "hashed": 400, "peak_rss_mb": seen["peak_rss_mb"]}
    # max_in_flight (4) chunks and the workers' items: tens of MB, not 3.2 GB.
    assert seen["peak_rss_mb"] < 200, seen
