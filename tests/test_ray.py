"""Scale-out on a real local Ray (2 CPUs, authentication off for the test cluster):
Ray Data batch embedding and the Ray Serve app (``embed --ray``: test_ray_job)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.model, pytest.mark.xdist_group("ray")]

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed")

from tests.helpers import sample_texts  # noqa: E402


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray of 2 CPUs for this module; its GCS address."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # Ray's sessions (logs, sockets) in a directory of the test's own, not /tmp/ray;
    # short, since Unix socket paths inside it are limited to 107 bytes.
    sessions = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    context = ray.init(
        _temp_dir=sessions,
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}},
    )
    try:
        yield str(context.address_info["gcs_address"])
    finally:
        ray.shutdown()
        shutil.rmtree(sessions, ignore_errors=True)


@pytest.fixture(scope="module")
def embedder() -> Iterator[Any]:
    from embedloom import Embedder

    with Embedder() as embedder:
        yield embedder


def test_embed_dataset_matches_the_embedder_in_vectors_and_order(
    cluster: str, embedder: Any
) -> None:
    from embedloom.distributed import embed_dataset

    # Enough rows for many Ray blocks across both actors; more only costs CI time.
    texts = sample_texts(400, seed=41, words=(3, 30))
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    rows = embed_dataset(ds, column="text", actors=2, cpus_per_actor=0.5).take_all()
    assert [row["id"] for row in rows] == list(range(len(texts))), "order and every row kept"
    assert [row["text"] for row in rows] == texts, "other columns kept"
    vectors = np.stack([row["embedding"] for row in rows])
    # Ray's batches differ from the embedder's, so padding differs: equal to float noise.
    np.testing.assert_allclose(vectors, embedder.embed(texts), atol=2e-6)


def test_an_actor_pool_that_would_starve_the_readers_is_refused(cluster: str) -> None:
    from embedloom.distributed import embed_dataset

    ds = ray.data.from_items([{"text": "x"}])
    with pytest.raises(ValueError, match="44687"):
        embed_dataset(ds, actors=2, cpus_per_actor=1.0)
    with pytest.raises(ValueError, match="no column 'body'"):
        embed_dataset(ds, column="body")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def serve_url(cluster: str, second_model_dir: Path) -> Iterator[str]:
    """One replica serving two models (the registry inside the replica)."""
    from ray import serve

    from embedloom import Settings
    from embedloom.distributed import serve_app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = Settings.from_environment().replace(
        model=("all-MiniLM-L6-v2", f"tiny={second_model_dir}")
    )
    app = serve_app(
        replicas=1,
        cpus_per_replica=1.0,
        max_ongoing_requests=8,
        max_queued_requests=8,
        settings=settings,
    )
    serve.run(app, name="embedloom")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def test_ray_serve_answers_like_embedloom_serve_for_each_model(
    serve_url: str, reference_encode: Any, second_reference_encode: Any
) -> None:
    texts = sample_texts(6, seed=45)
    reference = reference_encode(texts)
    with httpx.Client(base_url=serve_url, timeout=60) as client:
        openai = client.post("/v1/embeddings", json={"input": texts})
        tei = client.post("/embed", json={"inputs": texts})
        tiny = client.post("/v1/embeddings", json={"input": texts, "model": "tiny"})
        bad = client.post("/v1/embeddings", json={"input": []})
        health = client.get("/health")
        models = client.get("/v1/models")
    assert openai.status_code == 200
    vectors = np.array([item["embedding"] for item in openai.json()["data"]])
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    np.testing.assert_allclose(np.array(tei.json()), reference, atol=1e-5)
    assert tiny.status_code == 200
    np.testing.assert_allclose(
        np.array([item["embedding"] for item in tiny.json()["data"]]),
        second_reference_encode(texts),
        atol=1e-5,
    )
    assert [m["id"] for m in models.json()["data"]] == ["all-MiniLM-L6-v2", "tiny"]
    assert bad.status_code == 422
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
    assert health.json() == {"status": "ok"}


async def test_ray_serve_sheds_an_overload_burst(serve_url: str) -> None:
    heavy = sample_texts(64, seed=47)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=serve_url, timeout=120, limits=limits) as client:
        replies = await asyncio.wait_for(
            asyncio.gather(
                *(client.post("/v1/embeddings", json={"input": heavy}) for _ in range(60))
            ),
            timeout=180,
        )
    statuses = [reply.status_code for reply in replies]
    assert set(statuses) <= {200, 429, 503}, statuses
    assert 200 in statuses
    assert set(statuses) & {429, 503}, "some of the burst was shed"


def replicas_running(app: str) -> int:
    from ray import serve

    deployment = serve.status().applications[app].deployments["embedloom"]
    return int(deployment.replica_states.get("RUNNING", 0))


def until(condition: Any, what: str, timeout: float = 120) -> None:
    """Poll ``condition`` (Serve's controller state: there is no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.25)


@pytest.mark.timeout(600)  # on a busy 2-core machine Serve alone takes minutes here
def test_ray_serve_autoscales_up_under_load_and_back_down(
    serve_url: str, second_model_dir: Path
) -> None:
    """Beside the fixed app (its 1 CPU), one autoscaled between 1 and 2 replicas of
    0.1 CPU (whatever the module's earlier actors still hold, two fit) serving the
    small second model (a replica starts in seconds even on a busy machine), with
    Serve's delays shortened for the test."""
    from ray import serve

    from embedloom import Settings
    from embedloom.distributed import serve_app

    app = serve_app(
        settings=Settings.from_environment().replace(model=(str(second_model_dir),)),
        cpus_per_replica=0.1,
        max_ongoing_requests=4,
        autoscaling_config={
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 0.5,
            "downscale_delay_s": 2,
            "metrics_interval_s": 0.5,
            "look_back_period_s": 1,
        },
    )
    serve.run(app, name="scaled", route_prefix="/scaled")
    try:
        assert replicas_running("scaled") == 1
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=f"{serve_url}/scaled", timeout=120) as client:
                while not stop.is_set():
                    reply = client.post("/embed", json={"inputs": sample_texts(16)})
                    assert reply.status_code in (200, 429, 503), reply.text

        # Three callers keep about three requests in flight: over the target of one.
        clients = [threading.Thread(target=load) for _ in range(3)]
        for client in clients:
            client.start()
        try:
            until(lambda: replicas_running("scaled") == 2, "scaled up to 2 replicas", 300)
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=120)
        until(lambda: replicas_running("scaled") == 1, "scaled back down to 1")
    finally:
        serve.delete("scaled")
