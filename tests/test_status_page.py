"""The status page: ``GET /`` in headless Chromium offline, and the ``/status`` figures
it charts.

The browser tests run on the suite's real servers (tests/browser.py cuts the page
off from everything else); what the page's key handling and the figures promise
is checked in-process too, over the fake backend.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from embedloom.server.status import status_figures
from tests.browser import ARTIFACTS, offline_page
from tests.fakes import FakeBackend
from tests.helpers import GUARDED_KEYS, ServerProcess, sample_texts
from tests.test_server_unit import serving

DEFAULT = "all-MiniLM-L6-v2"


# -- in-process: what /status says and who may read it ---------------------------------


async def test_the_page_needs_no_key_its_figures_do_and_public_status_opens_only_them() -> None:
    key = "status-key-71c3"
    async with serving(FakeBackend(), api_key=(key,)) as served:
        client = served.client
        page = await client.get("/")
        assert page.status_code == 200
        assert key not in page.text
        assert (await client.get("/status/assets/page.js")).status_code == 200
        assert (await client.get("/status")).status_code == 401
        opened = await client.get("/status", headers={"Authorization": f"Bearer {key}"})
        assert opened.status_code == 200
        assert key not in opened.text
        # POST / is TEI's model route: open GET / opens nothing else.
        assert (await client.post("/", json={"inputs": "a"})).status_code == 401
    async with serving(FakeBackend(), api_key=(key,), public_status=True) as served:
        client = served.client
        assert (await client.get("/status")).status_code == 200
        similarity = {"inputs": {"source_sentence": "a", "sentences": ["b"]}}
        assert (await client.post("/similarity", json=similarity)).status_code == 401
        assert (await client.post("/v1/embeddings", json={"input": "a"})).status_code == 401


async def test_status_figures_are_the_engines_counts_and_the_model_routes_latencies() -> None:
    async with serving(FakeBackend()) as served:
        client = served.client
        # The engine's warm-up is counted too: compare with what it says, and grow by ours.
        before = (await client.get("/status")).json()["figures"]["models"][DEFAULT]
        for count in (1, 3, 5):
            reply = await client.post("/v1/embeddings", json={"input": ["x"] * count})
            assert reply.status_code == 200
        assert (await client.post("/embed", json={"inputs": "y"})).status_code == 200
        await client.get("/info")
        status = (await client.get("/status")).json()
        engine = served.engine.statistics()
    figures = status["figures"]
    assert figures["scope"] == "process"
    model = figures["models"][DEFAULT]
    assert model["inputs_embedded"] == engine.inputs_embedded == before["inputs_embedded"] + 10
    assert model["requests"]["completed"] == engine.requests_completed
    assert model["requests"]["completed"] == before["requests"]["completed"] + 4
    assert model["batches"] == engine.batches_run
    assert model["batched_inputs"] == before["batched_inputs"] + 10
    assert model["queued_inputs"] == 0
    latency = figures["request_seconds"]
    # The four POSTs, not the GETs of /info and /status.
    assert latency["cumulative"][-1] == 4
    assert len(latency["cumulative"]) == len(latency["bounds"]) + 1
    assert [m["name"] for m in status["models"]] == [DEFAULT]
    assert status["models"][0]["sharing"] == engine.worker.strategy


def test_status_figures_sum_the_buckets_of_routes_posted_to_only() -> None:
    samples = [
        ("embedloom_http_requests_total", {"route": "/embed", "method": "POST"}, 2.0),
        ("embedloom_http_requests_total", {"route": "/v1/embeddings", "method": "POST"}, 1.0),
        ("embedloom_http_requests_total", {"route": "/info", "method": "GET"}, 7.0),
        *(
            ("embedloom_http_request_duration_seconds_bucket", {"route": route, "le": le}, n)
            for route, counts in (("/embed", (1, 2, 2)), ("/v1/embeddings", (0, 1, 1)))
            for le, n in zip(("0.1", "1.0", "+Inf"), counts, strict=True)
        ),
        ("embedloom_http_request_duration_seconds_bucket", {"route": "/info", "le": "+Inf"}, 7),
        ("embedloom_queue_size", {"model": "m"}, 5.0),
        ("embedloom_engine_requests_total", {"model": "m", "outcome": "rejected"}, 3.0),
    ]
    figures = status_figures(samples, scope="fleet")
    assert figures["request_seconds"] == {"bounds": [0.1, 1.0], "cumulative": [1, 3, 3]}
    assert figures["models"]["m"]["queued_inputs"] == 5
    assert figures["models"]["m"]["requests"] == {"rejected": 3}
    assert figures["scope"] == "fleet"


# -- in Chromium, offline ------------------------------------------------------------


@contextmanager
def steady_load(url: str, inputs: list[str]) -> Iterator[threading.Event]:
    """Embedding requests back to back from two threads until the block ends."""
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while not stop.is_set():
                client.post("/v1/embeddings", json={"model": DEFAULT, "input": inputs})

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)


def latest(page: object, chart: str) -> dict[str, float | None]:
    raw = page.locator(f"#chart-{chart}").get_attribute("data-latest")  # type: ignore[attr-defined]
    return dict(json.loads(raw or "{}"))


def test_the_page_charts_a_load_as_it_runs_and_answers_similarity_offline(
    server: ServerProcess,
) -> None:
    info = httpx.get(f"{server.url}/info", timeout=30).json()
    first, second = "A man is eating food.", "Someone is having a meal."
    expected = httpx.post(
        f"{server.url}/similarity",
        json={"model": DEFAULT, "inputs": {"source_sentence": first, "sentences": [second]}},
        timeout=60,
    ).json()[0]
    with offline_page(server.url) as opened:
        page = opened.page
        page.goto(f"{server.url}/")
        page.wait_for_function(
            "n => document.querySelectorAll('#models tbody tr').length === n",
            arg=len(info["models"]),
            timeout=60_000,
        )
        table = page.locator("#models").inner_text()
        # Before any load: the throughput chart has points, and they are zero.
        page.wait_for_function(
            """name => {
              const latest = JSON.parse(
                document.getElementById('chart-throughput').dataset.latest || '{}');
              return latest[name] === 0;
            }""",
            arg=DEFAULT,
            timeout=60_000,
        )
        with steady_load(server.url, sample_texts(16)):
            page.wait_for_function(
                """name => {
                  const of = (chart) => JSON.parse(
                    document.getElementById('chart-' + chart).dataset.latest || '{}');
                  return of('throughput')[name] > 0 && of('batch')[name] > 0
                    && of('latency').p50 > 0;
                }""",
                arg=DEFAULT,
                timeout=60_000,
            )
            during = {chart: latest(page, chart) for chart in ("throughput", "batch", "latency")}
        page.select_option("#similarity-model", DEFAULT)
        page.fill("#similarity-a", first)
        page.fill("#similarity-b", second)
        page.click("#similarity button")
        page.wait_for_selector("#similarity-result[data-value]", timeout=60_000)
        shown = float(page.locator("#similarity-result").get_attribute("data-value") or "nan")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
        outside, errors = opened.outside, opened.errors
    assert outside == []
    assert errors == []
    for model in info["models"]:
        assert model["name"] in table
    assert info["models"][0]["backend_choice"]["variant"] in table
    assert during["throughput"][DEFAULT] > 0
    assert during["latency"]["p99"] >= during["latency"]["p50"] > 0
    assert shown == pytest.approx(expected, abs=1e-6)
    assert (ARTIFACTS / "status-page.png").stat().st_size > 10_000


def test_the_page_asks_for_a_key_and_keeps_it_out_of_the_address(
    guarded: ServerProcess,
) -> None:
    with offline_page(guarded.url) as opened:
        page = opened.page
        page.goto(f"{guarded.url}/")
        page.wait_for_selector("#key-form:not([hidden])", timeout=60_000)
        assert page.locator("#content").is_hidden()
        page.fill("#key", GUARDED_KEYS[0] + "-wrong")
        page.click("#key-form button")
        page.wait_for_function(
            "() => document.getElementById('key-message').textContent.includes('refused')",
            timeout=60_000,
        )
        page.fill("#key", GUARDED_KEYS[1])
        page.click("#key-form button")
        page.wait_for_selector("#models tbody tr", timeout=60_000)
        address = page.url
        html = page.content()
        errors = opened.errors
    assert errors == []
    assert GUARDED_KEYS[1] not in address
    assert GUARDED_KEYS[1] not in html  # the field is emptied once used
    assert DEFAULT in html
