"""``embedloom bench`` against fake endpoints written here (whose every answer is
counted, so the report can be checked against what was served) and against a real
``embedloom serve``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from embedloom.bench.command import run_bench
from embedloom.bench.flags import BenchOptions
from embedloom.bench.workload import RequestMix, generated_sentences
from embedloom.errors import InvalidInput
from tests.helpers import ServerProcess

EMBEDLOOM = str(Path(sys.executable).with_name("embedloom"))
TOKENS_PER_INPUT = 3


@dataclass
class FakeServer:
    """An HTTP endpoint on loopback speaking one dialect: ``openai`` (``/v1/embeddings``,
    listed in ``/openapi.json``) or ``tei`` (``/embed``, found through ``/info``). Every
    ``fail_every``-th embedding request is answered 503; each answer waits ``delay``
    seconds first; with ``close_after``, a connection is closed after that many answers
    without a word, as a server drops a kept-alive connection left idle. It tallies
    what it answered."""

    dialect: str
    fail_every: int = 0
    delay: float = 0.0
    close_after: int = 0
    answered: Counter[int] = field(default_factory=Counter)
    inputs_ok: int = 0
    url: str = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._exchanges(reader, writer)
        finally:
            writer.close()

    async def _exchanges(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answers = 0
        while line := await reader.readline():
            method, path, _ = line.decode().split(" ", 2)
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = header.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            status, payload, extra = self._answer(method, path, body)
            if self.delay:
                await asyncio.sleep(self.delay)  # a slow server, not synchronisation
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: {len(payload)}\r\n{extra}\r\n".encode()
                + payload
            )
            await writer.drain()
            answers += 1
            if answers == self.close_after:
                return

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        route = "/v1/embeddings" if self.dialect == "openai" else "/embed"
        if method == "GET" and path == "/openapi.json" and self.dialect == "openai":
            return 200, json.dumps({"paths": {route: {}}}).encode(), ""
        if method == "GET" and path == "/info" and self.dialect == "tei":
            return 200, b'{"model_id": "fake"}', ""
        if method != "POST" or path != route:
            return 404, b"{}", ""
        texts = json.loads(body)["input" if self.dialect == "openai" else "inputs"]
        count = sum(self.answered.values()) + 1
        if self.fail_every and count % self.fail_every == 0:
            self.answered[503] += 1
            return 503, b'{"error": "busy"}', ""
        self.answered[200] += 1
        self.inputs_ok += len(texts)
        tokens = TOKENS_PER_INPUT * len(texts)
        vectors = [[0.5, 0.25]] * len(texts)
        if self.dialect == "tei":
            return 200, json.dumps(vectors).encode(), f"x-compute-tokens: {tokens}\r\n"
        data = [{"index": i, "embedding": v} for i, v in enumerate(vectors)]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return 200, json.dumps({"data": data, "usage": usage}).encode(), ""


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    yield from _serve(FakeServer("openai", fail_every=4))


def _serve(server: FakeServer) -> Iterator[FakeServer]:
    """``server`` listening on a thread of its own until the generator is closed."""
    started = threading.Event()
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    async def main() -> None:
        listening = await asyncio.start_server(server._handle, "127.0.0.1", 0)
        server.url = f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
        stop = asyncio.get_running_loop().create_future()
        running.append((asyncio.get_running_loop(), stop))
        started.set()
        async with listening:
            await stop

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield server
    finally:
        [(loop, stop)] = running
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(10)


def test_a_kept_alive_connection_the_server_dropped_is_reopened_and_nothing_sent_twice() -> None:
    from embedloom.bench.http import Connection, Endpoint

    async def three_requests(url: str) -> list[int]:
        connection = Connection(Endpoint.parse(url + "/v1/embeddings"))
        body = json.dumps({"input": ["a"]}).encode()
        answers = [await connection.request("POST", "/v1/embeddings", body) for _ in range(3)]
        await connection.close()
        return [answer.status for answer in answers]

    for server in _serve(FakeServer("openai", close_after=1)):
        assert asyncio.run(three_requests(server.url)) == [200, 200, 200]
        assert server.answered == Counter({200: 3})


def test_counts_tokens_and_errors_are_what_the_fake_served(
    fake: FakeServer, tmp_path: Path
) -> None:
    options = BenchOptions(
        urls=(fake.url,),
        mix=RequestMix.parse("1:1,8:1"),
        levels=(4,),
        duration=None,
        requests=40,
        warmup=0,
        json_path=tmp_path / "samples.json",
        markdown_path=tmp_path / "report.md",
        progress=False,
    )
    text = run_bench(options)
    report = json.loads((tmp_path / "samples.json").read_text())
    [step] = report["steps"]
    summary = step["summary"]
    assert summary["api"] == "openai"  # found in the fake's /openapi.json
    assert summary["requests"] == len(step["samples"]) == 40 == sum(fake.answered.values())
    assert summary["errors"] == {"503": fake.answered[503]} == {"503": 10}
    assert summary["ok"] == fake.answered[200] == 30
    ok = [s for s in step["samples"] if s[2] == 200]
    assert sum(s[3] for s in ok) == fake.inputs_ok
    assert sum(s[4] for s in ok) == TOKENS_PER_INPUT * fake.inputs_ok
    assert summary["sentences_per_s"] == pytest.approx(fake.inputs_ok / summary["seconds"], 0.01)
    latencies = sorted(s[1] for s in ok)
    assert summary["p50_ms"] == pytest.approx(1000 * latencies[15], abs=0.01)
    assert summary["max_ms"] == pytest.approx(1000 * latencies[-1], abs=0.01)
    assert "503×10" in text
    assert "503×10" in (tmp_path / "report.md").read_text()


def test_a_tei_server_found_through_info_and_a_slow_one_in_an_open_loop_sweep() -> None:
    for server in _serve(FakeServer("tei", delay=0.05)):
        options = BenchOptions(
            urls=(server.url,),
            mode="open",
            levels=(20, 40),
            duration=None,
            requests=10,
            warmup=0,
            progress=False,
        )
        text = run_bench(options)
        assert sum(server.answered.values()) == 20  # two steps of 10
        rows = [line for line in text.splitlines() if "req/s" in line]
        assert [row.split()[1:3] for row in rows] == [["20", "req/s"], ["40", "req/s"]]
        for row in rows:
            cells = row.split()
            assert cells[0] == f"{server.url}/embed"
            sentences, tokens, p50 = float(cells[4]), float(cells[5]), float(cells[7])
            assert tokens == pytest.approx(TOKENS_PER_INPUT * sentences, abs=0.1)  # the header's
            assert p50 >= 50  # every answer waited 50 ms


def test_two_servers_interleaved_in_rounds_with_ratios_and_a_chart(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the 'bench' extra draws the chart")
    servers = [_serve(FakeServer("openai")), _serve(FakeServer("tei"))]
    first, second = (next(server) for server in servers)
    options = BenchOptions(
        urls=(f"first={first.url}", f"{second.url}/embed"),
        levels=(1, 2),
        duration=None,
        requests=6,
        warmup=0,
        rounds=2,
        chart_path=tmp_path / "chart.png",
        json_path=tmp_path / "samples.json",
        progress=False,
    )
    run_bench(options)
    assert sum(first.answered.values()) == sum(second.answered.values()) == 2 * 2 * 6
    steps = json.loads((tmp_path / "samples.json").read_text())["steps"]
    order = [(s["summary"]["round"], s["summary"]["level"], s["summary"]["api"]) for s in steps]
    assert order == [
        (r, level, api) for r in (0, 1) for level in (1.0, 2.0) for api in ("openai", "tei")
    ]
    assert all(s["summary"]["ratio"] == 1.0 for s in steps if s["summary"]["api"] == "openai")
    # NAME=URL labels a server in the reports; unlabelled, its URL names it.
    assert {s["summary"]["server"] for s in steps} == {"first", f"{second.url}/embed"}
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for server in servers:
        next(server, None)


def test_an_unreachable_server_and_bad_flags_are_one_line_each() -> None:
    def bench(*args: str) -> subprocess.CompletedProcess[str]:
        command = [EMBEDLOOM, "bench", *args, "--warmup", "0", "--requests", "1"]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    for args, says in (
        (("http://127.0.0.1:9",), "cannot reach http://127.0.0.1:9"),
        (("http://127.0.0.1:9", "--inputs-per-request", "1:x"), "--inputs-per-request"),
        (("http://127.0.0.1:9", "--concurrency", "2.5"), "whole numbers"),
        (("ftp://example",), "not an http:// or https:// URL"),
        (("http://127.0.0.1:9/v1/other",), "pass --api"),
        (("http://127.0.0.1:9", "--words", "0"), "--words 0"),
        (("http://127.0.0.1:9", "--words", "9", "--texts", "t.txt"), "with --texts yours"),
    ):
        result = bench(*args)
        assert result.returncode == 2, (args, result.stderr)
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("embedloom: "), line
        assert says in line, line


@pytest.mark.parametrize("mean", [5.0, 27.0, 120.0])
def test_generated_texts_have_the_mean_words_asked(mean: float) -> None:
    words = [len(text.split()) for text in generated_sentences(4096, mean_words=mean)]
    assert sum(words) / len(words) == pytest.approx(mean, rel=0.15)
    assert max(words) > 1.5 * mean  # a long tail, not a fixed length


def test_a_chart_without_matplotlib_is_refused_before_any_load(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    options = BenchOptions(urls=(fake.url,), chart_path=tmp_path / "c.png", progress=False)
    with pytest.raises(InvalidInput, match=r"pip install 'embedloom\[bench\]'"):
        run_bench(options)
    assert not fake.answered


def test_against_a_real_embedloom_server(server: ServerProcess) -> None:
    result = subprocess.run(
        [
            *(EMBEDLOOM, "bench", server.url, "--concurrency", "2", "--requests", "12"),
            *("--warmup", "0", "--inputs-per-request", "1:2,4:1", "--quiet"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    [header, row] = result.stdout.strip().splitlines()
    assert header.split()[:3] == ["server", "load", "round"]
    cells = row.split()
    assert cells[0] == f"{server.url}/v1/embeddings"
    assert float(cells[4]) > 0  # sentences/s
    assert float(cells[5]) > 0  # tokens/s, from the answers' usage
    assert cells[-2] == "–"  # no errors
