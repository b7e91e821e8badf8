"""``embedloom serve --workers N`` under gunicorn: real processes on loopback."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.fake_hub import FakeHub
from tests.helpers import ServerProcess, metric_value

pytestmark = pytest.mark.model

MODEL = "all-MiniLM-L6-v2"


def embed(url: str, texts: list[str], model: str = MODEL) -> tuple[int, np.ndarray[Any, Any]]:
    """One request on a fresh connection (so the kernel picks a worker each time)."""
    body = {"input": texts, "model": model}
    response = httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)
    response.raise_for_status()
    vectors = np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)
    return int(response.headers["x-embedloom-worker"]), vectors


def until_seen(
    url: str, pids: set[int], texts: list[str], model: str = MODEL
) -> tuple[dict[int, np.ndarray[Any, Any]], int]:
    """Requests until every pid in ``pids`` has answered one (bounded): the first
    answer of each worker, and how many requests it took."""
    answers: dict[int, np.ndarray[Any, Any]] = {}
    for sent in range(1, 401):
        pid, vectors = embed(url, texts, model)
        answers.setdefault(pid, vectors)
        if pids <= answers.keys():
            return answers, sent
    raise AssertionError(f"workers {pids - answers.keys()} never answered")


def metric(url: str, name: str, **labels: str) -> float:
    """A value from ``/metrics``; 0 when the series does not exist yet."""
    return metric_value(httpx.get(f"{url}/metrics", timeout=30).text, name, **labels)


@dataclass
class Cluster:
    server: ServerProcess
    workers: set[int]  # pids of the workers serving now

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def preloaded(second_model_dir: Path) -> Iterator[Cluster]:
    """Two workers forked from a master that preloaded two models."""
    models = ("--model", MODEL, "--model", f"tiny={second_model_dir}")
    with ServerProcess.start("--workers", "2", "--preload", *models) as server:
        yield Cluster(server, server.engine_pids(2))
        assert server.terminate() == 0


def test_preload_loads_once_in_the_master_with_no_thread_started_before_fork(
    preloaded: Cluster,
) -> None:
    entries = preloaded.server.log_entries()
    [preload] = [e for e in entries if e["message"].startswith("preloaded in the master")]
    assert preload["native_threads"] == 1, preload["message"]
    loads = [e for e in entries if e["message"].startswith("loaded model from")]
    assert len(loads) == 2  # each model once, in the master, not once per worker
    plans = [e["message"] for e in entries if e["message"].startswith("sharing:")]
    # 2 cores between 2 workers: one compute thread each, never more than the cores.
    assert plans
    assert all("budget 1" in plan for plan in plans), plans
    assert preloaded.server.process.pid not in preloaded.workers


_EMBEDDINGS_OK = {"method": "POST", "route": "/v1/embeddings", "status": "200"}


def test_both_workers_answer_with_the_right_vectors_and_metrics_sum_them(
    preloaded: Cluster, reference_encode: Callable[[list[str]], Any], texts: list[str]
) -> None:
    before = metric(preloaded.url, "embedloom_http_requests_total", **_EMBEDDINGS_OK)
    sample = texts[:3]
    answers, sent = until_seen(preloaded.url, preloaded.workers, sample)
    expected = np.asarray(reference_encode(sample))
    for pid, vectors in answers.items():
        np.testing.assert_allclose(vectors, expected, atol=2e-5, err_msg=f"worker {pid}")

    # Any worker's /metrics counts every worker's requests.
    after = metric(preloaded.url, "embedloom_http_requests_total", **_EMBEDDINGS_OK)
    assert after - before == sent
    # One replica of each model per worker, summed over the workers.
    assert metric(preloaded.url, "embedloom_replicas", model=MODEL) == 2
    assert metric(preloaded.url, "embedloom_replicas") == 4
    # The status page's figures are the fleet's too, and say so; its models, the
    # answering worker's.
    # Each worker mirrors its engine's counts into the shared files once a second
    # (metrics.py), so the other worker's share shows within a second: poll for it.
    expected = len(sample) * sent
    deadline = time.monotonic() + 30
    while True:
        status = httpx.get(f"{preloaded.url}/status", timeout=30).json()
        fleet = status["figures"]["models"][MODEL]["inputs_embedded"]
        if fleet >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status["workers"] == 2
    assert status["pid"] in preloaded.workers
    assert status["figures"]["scope"] == "fleet"
    assert fleet >= expected
    # Counters only grow: /metrics, read after, shows at least as much.
    assert metric(preloaded.url, "embedloom_inputs_embedded_total", model=MODEL) >= fleet


def test_every_worker_serves_each_preloaded_model(
    preloaded: Cluster, second_reference_encode: Callable[[list[str]], Any], texts: list[str]
) -> None:
    sample = texts[:3]
    answers, _ = until_seen(preloaded.url, preloaded.workers, sample, model="tiny")
    expected = np.asarray(second_reference_encode(sample))
    for pid, vectors in answers.items():
        np.testing.assert_allclose(vectors, expected, atol=2e-5, err_msg=f"worker {pid}")


@dataclass
class _Outcome:
    started: float
    ok: bool
    pid: int | None


def test_a_killed_worker_is_replaced_and_no_other_request_is_lost(
    preloaded: Cluster, texts: list[str]
) -> None:
    victim, survivor = sorted(preloaded.workers)
    outcomes: list[_Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(index: int) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                pid, _ = embed(preloaded.url, texts[index : index + 4])
                outcome = _Outcome(started, True, pid)
            except httpx.HTTPError:
                outcome = _Outcome(started, False, None)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        until_seen(preloaded.url, {victim, survivor}, texts[:1])  # both are serving
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        [replacement] = preloaded.server.engine_pids(1)
        preloaded.workers = {survivor, replacement}
        answers, _ = until_seen(preloaded.url, {replacement}, texts[:2])
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    after_kill = [o for o in outcomes if o.started > killed_at]
    assert after_kill, "no request ran after the kill"
    assert all(o.ok for o in after_kill), "a request sent after the kill failed"
    assert all(o.pid != victim for o in after_kill)
    # What was lost at all was in flight on the victim when it died: one per client
    # at most.
    assert len([o for o in outcomes if not o.ok]) <= len(threads)
    assert replacement in answers


def test_two_multi_worker_servers_started_together_on_one_empty_store(
    model_dir: Path, tmp_path: Path
) -> None:
    with FakeHub({"acme/minilm": model_dir}) as hub:
        env = {
            "HF_HUB_OFFLINE": "0",
            "HF_ENDPOINT": hub.url,
            "EMBEDLOOM_HOME": str(tmp_path),
            "HF_HOME": str(tmp_path / "hf"),
        }
        hub.behaviour.seconds_per_chunk = 0.002  # both are waiting while one fetches
        args = ("--workers", "2", "--model", "acme/minilm")
        starts: list[ServerProcess] = []
        errors: list[BaseException] = []

        def start() -> None:
            try:
                starts.append(ServerProcess.start(*args, env=env))
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        launchers = [threading.Thread(target=start) for _ in range(2)]
        for launcher in launchers:
            launcher.start()
        for launcher in launchers:
            launcher.join(timeout=240)
        try:
            assert not errors, errors
            assert len(starts) == 2
            for server in starts:
                server.engine_pids(2)
                _, vectors = embed(server.url, ["hello"], model="acme/minilm")
                assert vectors.shape == (1, 384)
            assert set(hub.downloads().values()) == {1}, hub.downloads()
        finally:
            for server in starts:
                assert server.terminate() == 0
                server.__exit__(None, None, None)
