"""What retrieval quality each quantized embedding type keeps.

    .venv/bin/python benchmarks/quantized.py     # ~20 s

On the accuracy gate's set (``data/calibration.txt``: 140 sentences, 14 topics),
with the ranges the server uses (calibrated on ``data/quantization.txt``, a
different corpus), each sentence's top-10 neighbours by float cosine are
compared with its top-10 by the quantized type's own similarity: the dot product
of the int8 codes as they are (uint8 codes shifted by −128 are the same
numbers), and of the codes mapped back through the ranges (what a store that
keeps the ranges, or rescores, compares); the number of equal sign bits for
binary/ubinary. Writes ``results/quantized.md``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent))
from embedloom import Engine, Settings  # noqa: E402
from embedloom.cpu import cpu_model  # noqa: E402
from embedloom.quantize import Calibrations, encode_vectors  # noqa: E402

K = 10


def top_k(similarity: np.ndarray) -> np.ndarray:
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :K]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / K for x, y in zip(a, b, strict=True)]))


async def measure() -> dict[str, float]:
    text = resources.files("embedloom").joinpath("data/calibration.txt").read_text("utf-8")
    texts = [line for line in text.splitlines() if line.strip()]
    async with Engine.from_settings(Settings(backend="torch", dtype="fp32")) as engine:
        floats = (await engine.embed(texts)).vectors
        calibration = await Calibrations().of(engine)
        ranges = calibration.ranges(floats.shape[1], True)
    reference = top_k(floats @ floats.T)
    figures = {"float": overlap(reference, reference)}
    steps = (ranges[1] - ranges[0]) / 255
    for kind in ("int8", "uint8"):
        codes = np.asarray(encode_vectors(floats, kind, ranges), dtype=np.float64)
        if kind == "uint8":
            codes -= 128
        figures[kind] = overlap(reference, top_k(codes @ codes.T))
        # Each code mapped back to the middle of its step: what a store that keeps
        # the ranges (or rescores) compares.
        restored = (codes + 128 + 0.5) * steps + ranges[0]
        figures[f"{kind}, dequantized"] = overlap(reference, top_k(restored @ restored.T))
    for kind in ("binary", "ubinary"):
        packed = np.asarray(encode_vectors(floats, kind), dtype=np.int16)
        bits = np.unpackbits((packed + (128 if kind == "binary" else 0)).astype(np.uint8), axis=1)
        signs = bits.astype(np.float64) * 2 - 1  # equal bits minus unequal bits
        figures[kind] = overlap(reference, top_k(signs @ signs.T))
    return figures


def main() -> None:
    figures = asyncio.run(measure())
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = "\n".join(
        f"| {kind} | {1536 if kind == 'float' else (384 if 'int8' in kind else 48)} | {value:.3f} |"
        for kind, value in figures.items()
    )
    text = f"""# Quantized embeddings: what retrieval quality each type keeps

{stamp}, {cpu_model()}, {os.cpu_count()} CPUs; all-MiniLM-L6-v2, torch fp32.
`.venv/bin/python benchmarks/quantized.py`

Top-{K} neighbour overlap with float cosine on the accuracy gate's set (140
sentences), ranges calibrated on the shipped quantization corpus (145 other
sentences).

| type | bytes per vector | top-{K} overlap |
|---|---:|---:|
{rows}
"""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quantized.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
