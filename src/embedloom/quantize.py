"""Quantized embeddings: int8/uint8 with calibrated ranges, and packed bits.

The arithmetic is sentence-transformers' ``quantize_embeddings`` (6.x): int8 and
uint8 map each dimension's calibrated range [min, max] onto 256 steps (floored,
and clipped at the ends, so a value outside the range takes the nearest end);
binary and ubinary keep the sign bit of each dimension, packed eight to a byte
(binary shifted by −128 into int8).

The ranges come from a corpus shipped with the package (``data/quantization.txt``,
not the accuracy gate's set), embedded once per loaded model; a request's ranges
are taken after its ``dimensions`` cut and normalisation, so they describe the
vectors being quantized. docs/compatibility.md states what retrieval quality
each type keeps.
"""

from __future__ import annotations

import asyncio
import base64
import weakref
from importlib import resources
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import numpy.typing as npt

from embedloom.engine.work import finished_vectors
from embedloom.errors import InvalidInput

if TYPE_CHECKING:
    from embedloom.engine import Engine

__all__ = [
    "EMBEDDING_TYPES",
    "Calibration",
    "Calibrations",
    "EmbeddingType",
    "calibration_texts",
    "encode_vectors",
    "validated_embedding_type",
]

EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
EMBEDDING_TYPES: tuple[str, ...] = get_args(EmbeddingType)

Vectors = npt.NDArray[np.float32]


def validated_embedding_type(name: str, *, param: str = "embedding_type") -> EmbeddingType:
    if name not in EMBEDDING_TYPES:
        raise InvalidInput(
            f"{param} must be one of {', '.join(EMBEDDING_TYPES)}, not {name!r}", param=param
        )
    return name  # type: ignore[return-value]


def calibration_texts() -> list[str]:
    """The shipped corpus the int8/uint8 ranges are calibrated on."""
    text = resources.files("embedloom").joinpath("data/quantization.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line.strip()]


class Calibrations:
    """Each loaded model's calibration, made once (by embedding the corpus through
    the model's own engine, so through the same variant that serves it) and kept
    while the engine lives."""

    def __init__(self) -> None:
        self._made: weakref.WeakKeyDictionary[Engine, Calibration] = weakref.WeakKeyDictionary()
        self._locks: weakref.WeakKeyDictionary[Engine, asyncio.Lock] = weakref.WeakKeyDictionary()

    async def of(self, engine: Engine) -> Calibration:
        made = self._made.get(engine)
        if made is not None:
            return made
        async with self._locks.setdefault(engine, asyncio.Lock()):
            made = self._made.get(engine)
            if made is None:
                result = await engine.embed(calibration_texts(), normalize=False, truncate=True)
                made = self._made[engine] = Calibration(result.vectors)
        return made


class Calibration:
    """One model's raw (full width, not normalised) embeddings of the calibration
    corpus, from which each request's ranges are cut."""

    def __init__(self, raw: Vectors) -> None:
        self._raw = raw
        self._ranges: dict[tuple[int, bool], npt.NDArray[np.float32]] = {}

    def ranges(self, dimensions: int, normalize: bool) -> npt.NDArray[np.float32]:
        """Per-dimension [min; max] (shape ``(2, dimensions)``) of the corpus's vectors
        cut and normalised as a request's are."""
        key = (dimensions, normalize)
        if key not in self._ranges:
            vectors = finished_vectors(self._raw, dimensions, normalize)
            self._ranges[key] = np.vstack((vectors.min(axis=0), vectors.max(axis=0)))
        return self._ranges[key]


def encode_vectors(
    vectors: Vectors, kind: EmbeddingType, ranges: npt.NDArray[np.float32] | None = None
) -> list[object]:
    """Rows of ``vectors`` as ``kind`` asks, ready for JSON: lists of floats or ints,
    or base64 strings of little-endian float32 bytes. int8/uint8 need ``ranges``."""
    if kind == "float":
        return list(vectors)
    if kind == "base64":
        return [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
    if kind in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=1)
        if kind == "binary":
            return list((packed.astype(np.int16) - 128).astype(np.int8))
        return list(packed)
    assert ranges is not None, "int8/uint8 need calibrated ranges"
    starts = ranges[0]
    steps = (ranges[1] - ranges[0]) / 255
    # A dimension constant over the corpus has no width; one step keeps it finite.
    steps = np.where(steps > 0, steps, np.float32(1.0))
    levels = np.clip(np.floor((vectors - starts) / steps), 0, 255)
    if kind == "uint8":
        return list(levels.astype(np.uint8))
    return list((levels - 128).astype(np.int8))
