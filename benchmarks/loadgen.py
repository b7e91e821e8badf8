"""Closed-loop HTTP load generator; run it as its own process.

    python benchmarks/loadgen.py --url http://127.0.0.1:8080/v1/embeddings \
        --clients 32 --texts-per-request 1 --duration 20

Each client sends a request, waits for the answer, and sends the next, on its
own keep-alive connection. The client is a minimal HTTP/1.1 implementation on
asyncio streams: on a 2-core machine a heavier client would steal the CPU the
server is being measured on. Prints one JSON object: requests, sentences/s,
latency percentiles, and status counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import sentences


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        return await self.request("POST", path, body)

    async def request(
        self, method: str, path: str, body: bytes = b"", *, close: bool = False
    ) -> tuple[int, bytes]:
        """One exchange; ``close`` asks the server to close the connection after it."""
        await self.connect()
        assert self._reader is not None
        assert self._writer is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        ).encode()
        self._writer.write(head + body)
        status_line = await self._reader.readline()
        status = int(status_line.split()[1])
        length = 0
        closing = close
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                closing = True
        payload = await self._reader.readexactly(length)
        if closing:
            await self.close()
        return status, payload

    async def connect(self) -> None:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


async def run(url: str, clients: int, per_request: int, duration: float, route: str) -> dict:
    parts = urlsplit(url)
    texts = sentences(4096)
    key = "inputs" if route == "tei" else "input"
    stop_at = time.perf_counter() + duration
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    sent_sentences = 0

    async def client(index: int) -> None:
        nonlocal sent_sentences
        connection = Connection(parts.hostname or "127.0.0.1", parts.port or 80)
        cursor = index * 997
        while time.perf_counter() < stop_at:
            batch = [texts[(cursor + i) % len(texts)] for i in range(per_request)]
            cursor += per_request * clients
            body = json.dumps({key: batch}).encode()
            started = time.perf_counter()
            try:
                status, _ = await connection.post(parts.path, body)
            except (ConnectionError, asyncio.IncompleteReadError):
                status = 599
                await connection.close()
            latencies.append(time.perf_counter() - started)
            statuses[status] += 1
            if status == 200:
                sent_sentences += per_request
        await connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "clients": clients,
        "texts_per_request": per_request,
        "seconds": round(elapsed, 3),
        "requests": len(latencies),
        "sentences_per_s": round(sent_sentences / elapsed, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2)
        if latencies
        else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080/v1/embeddings")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--route", choices=("openai", "tei"), default="openai")
    args = parser.parse_args()
    result = asyncio.run(
        run(args.url, args.clients, args.texts_per_request, args.duration, args.route)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
