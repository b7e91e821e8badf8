"""Scope over HTTP on a real server: batch log lines, deadlines, priority, streaming,
and a client that leaves mid-stream."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from tests.helpers import ServerProcess, metric_value

pytestmark = pytest.mark.model


def test_the_inference_thread_logs_each_batch_with_its_request_ids(server: ServerProcess) -> None:
    response = httpx.post(
        f"{server.url}/embed", json={"inputs": ["find me"]}, headers={"x-request-id": "trace-me-1"}
    )
    assert response.status_code == 200
    line = server.wait_for_log(
        lambda e: "running batch" in e["message"] and "trace-me-1" in e.get("request_ids", [])
    )
    assert line["thread"].startswith("embedloom-")  # the inference thread, not the loop's
    assert line["thread"] != "MainThread"
    assert isinstance(line["batch_id"], int)
    assert "trace-me-1" in line["request_id"]  # so a search for the id finds it


def test_a_request_past_its_deadline_gets_504_naming_it(server: ServerProcess) -> None:
    response = httpx.post(
        f"{server.url}/embed",
        json={"inputs": [f"sentence number {i} " * 20 for i in range(64)]},
        headers={"x-request-timeout": "0.001"},
    )
    assert response.status_code == 504
    assert response.json()["error_type"] == "timeout"
    assert "deadline" in response.json()["error"]
    openai = httpx.post(
        f"{server.url}/v1/embeddings",
        json={"input": ["x " * 100] * 64},
        headers={"x-request-timeout": "0.001"},
    )
    assert openai.status_code == 504
    assert openai.json()["error"]["type"] == "timeout_error"


@pytest.mark.parametrize(
    ("header", "value", "words"),
    [
        ("x-request-timeout", "soon", "X-Request-Timeout"),
        ("x-request-timeout", "-1", "positive"),
        ("x-priority", "urgent", "X-Priority"),
    ],
)
def test_bad_scope_headers_are_422_naming_the_header(
    server: ServerProcess, header: str, value: str, words: str
) -> None:
    response = httpx.post(f"{server.url}/embed", json={"inputs": "x"}, headers={header: value})
    assert response.status_code == 422
    assert words in response.json()["error"]


def test_priority_reaches_the_engine(server: ServerProcess) -> None:
    response = httpx.post(
        f"{server.url}/embed",
        json={"inputs": ["low work"]},
        headers={"x-priority": "LOW", "x-request-id": "low-1"},
    )
    assert response.status_code == 200
    admitted = server.wait_for_log(
        lambda e: e.get("request_id") == "low-1" and e["message"].startswith("admitted")
    )
    assert admitted["priority"] == "low"


# -- streaming -------------------------------------------------------------------

# Short texts, so that 20,000 of them stream in well under a minute on 2 cores.
_DISTINCT = [f"stone {i}" for i in range(200)]


def _stream(url: str, count: int) -> list[dict[str, object]]:
    texts = [_DISTINCT[i % len(_DISTINCT)] for i in range(count)]
    lines = []
    with httpx.stream("POST", f"{url}/embed_stream", json={"inputs": texts}, timeout=300) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("application/x-ndjson")
        for raw in reply.iter_lines():
            lines.append(orjson.loads(raw))
    return lines


def _rss_kb(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    assert found
    return int(found.group(1))


def _peak_growth_mb(server: ServerProcess, count: int) -> tuple[float, list[dict[str, object]]]:
    """Stream ``count`` inputs; how far the server's peak RSS rose above where it was."""
    pid = server.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
    before = _rss_kb(pid, "VmRSS")
    lines = _stream(server.url, count)
    return (_rss_kb(pid, "VmHWM") - before) / 1024, lines


@pytest.mark.timeout(400)
def test_a_12000_input_stream_comes_back_in_order_in_bounded_memory() -> None:
    with ServerProcess.start() as server:
        reference = httpx.post(f"{server.url}/embed", json={"inputs": _DISTINCT}, timeout=120)
        expected = np.array(reference.json(), dtype=np.float32)
        _stream(server.url, 500)  # warm up: allocator pools, first-use paths
        small_growth, _ = _peak_growth_mb(server, 1_200)
        large_growth, lines = _peak_growth_mb(server, 12_000)
        assert server.terminate() == 0

    assert [line["index"] for line in lines] == list(range(12_000))
    vectors = np.array([line["embedding"] for line in lines], dtype=np.float32)
    np.testing.assert_allclose(vectors, expected[np.arange(12_000) % 200], atol=2e-5)
    # Ten times the inputs, not ten times the memory: holding the 12,000 results
    # (18 MB as float32, ~90 MB as JSON) would show here.
    assert large_growth < small_growth + 15, (small_growth, large_growth)


def test_a_client_leaving_mid_stream_stops_it_and_its_inputs_never_run() -> None:
    with ServerProcess.start() as server:
        host, port = server.url.removeprefix("http://").split(":")
        texts = [_DISTINCT[i % 200] for i in range(5_000)]
        body = json.dumps({"inputs": texts}).encode()
        with socket.create_connection((host, int(port))) as client:
            client.sendall(
                b"POST /embed_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert client.recv(4096).startswith(b"HTTP/1.1 200")  # streaming has begun
        # The connection is closed; the server notices and drops the rest.
        server.wait_for_log(lambda e: e["message"].startswith("the client left the stream"))
        metrics = httpx.get(f"{server.url}/metrics").text
        dropped = metric_value(metrics, "embedloom_inputs_dropped_total")
        embedded = metric_value(metrics, "embedloom_inputs_embedded_total")
        batched = metric_value(metrics, "embedloom_batch_size_sum")
        assert server.terminate() == 0
    # A few chunks were in flight when the client left; the rest never ran.
    assert embedded < 1_000
    assert batched < 1_000  # what the model ran, counted by its batches
    assert dropped + embedded >= 5_000 - 200  # every input is accounted for, bar a chunk
