"""The accuracy gate: may a faster variant of a model stand in for fp32?

A variant (bf16 weights, an ONNX export, int8 weights) is compared with the
fp32 torch reference on a fixed calibration set shipped with the package
(``data/calibration.txt``: 140 sentences, 14 topics). It passes when

- the mean cosine between its vectors and the reference's is ≥ 0.999,
- the smallest cosine is ≥ 0.995, and
- each sentence's 10 nearest neighbours within the set overlap the
  reference's by ≥ 90% on average: what a search index would return stays
  what it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from embedloom.backends.base import Backend

__all__ = [
    "MIN_COSINE",
    "MIN_MEAN_COSINE",
    "MIN_NEIGHBOUR_OVERLAP",
    "NEIGHBOURS",
    "GateFigures",
    "calibration_texts",
    "embed_texts",
    "measure",
]

MIN_MEAN_COSINE = 0.999
MIN_COSINE = 0.995
MIN_NEIGHBOUR_OVERLAP = 0.90
NEIGHBOURS = 10

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class GateFigures:
    """How closely a variant's vectors follow the reference's on the calibration set."""

    mean_cosine: float
    min_cosine: float
    neighbour_overlap: float

    @property
    def passed(self) -> bool:
        return not self.shortfalls()

    def shortfalls(self) -> list[str]:
        """Each threshold missed, with the figure that missed it."""
        missed = []
        if self.mean_cosine < MIN_MEAN_COSINE:
            missed.append(f"mean cosine {self.mean_cosine:.5f} < {MIN_MEAN_COSINE}")
        if self.min_cosine < MIN_COSINE:
            missed.append(f"min cosine {self.min_cosine:.5f} < {MIN_COSINE}")
        if self.neighbour_overlap < MIN_NEIGHBOUR_OVERLAP:
            missed.append(
                f"top-{NEIGHBOURS} neighbour overlap {self.neighbour_overlap:.1%} "
                f"< {MIN_NEIGHBOUR_OVERLAP:.0%}"
            )
        return missed

    def describe(self) -> str:
        return (
            f"mean cosine {self.mean_cosine:.5f}, min {self.min_cosine:.5f}, "
            f"top-{NEIGHBOURS} overlap {self.neighbour_overlap:.1%}"
        )

    def to_json(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GateFigures:
        return cls(
            **{k: float(data[k]) for k in ("mean_cosine", "min_cosine", "neighbour_overlap")}
        )


def calibration_texts() -> list[str]:
    """The shipped calibration sentences, in their fixed order."""
    text = resources.files("embedloom").joinpath("data/calibration.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line.strip()]


def measure(reference: Vectors, candidate: Vectors) -> GateFigures:
    """Compare two sets of vectors for the same texts, row by row."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    ref = _unit(reference)
    cand = _unit(candidate)
    cosines = np.einsum("ij,ij->i", ref, cand)
    overlap = _neighbour_overlap(ref, cand, min(NEIGHBOURS, len(ref) - 1))
    return GateFigures(
        mean_cosine=float(cosines.mean()),
        min_cosine=float(cosines.min()),
        neighbour_overlap=overlap,
    )


def embed_texts(backend: Backend, texts: Sequence[str], *, batch_size: int = 32) -> Vectors:
    """Every text's raw vector, in order, from batches of similar length (as the
    engine's batcher forms them)."""
    tokenized = backend.tokenize(texts)
    order = sorted(range(len(texts)), key=lambda i: tokenized[i].n_tokens)
    out = np.empty((len(texts), backend.dimensions), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        out[rows] = backend.embed([tokenized[i] for i in rows])
    return out


def _unit(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def _neighbour_overlap(ref: Vectors, cand: Vectors, k: int) -> float:
    if k < 1:
        return 1.0

    def nearest(unit: Vectors) -> npt.NDArray[np.intp]:
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)  # a sentence is not its own neighbour
        return np.argsort(-similarity, axis=1, kind="stable")[:, :k]

    ref_nn, cand_nn = nearest(ref), nearest(cand)
    shared = [len(set(a) & set(b)) for a, b in zip(ref_nn, cand_nn, strict=True)]
    return float(np.mean(shared) / k)
