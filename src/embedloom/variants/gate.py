"""The accuracy gate: may a faster variant of a model stand in for fp32?

A variant (bf16 weights, an ONNX export, int8 weights) is compared with the
fp32 torch reference on a fixed calibration set shipped with the package
(``data/calibration.txt``: 140 sentences, 14 topics). It passes when

- the mean cosine between its vectors and the reference's is ≥ 0.999,
- the smallest cosine is ≥ 0.995, and
- each sentence's 10 nearest neighbours within the set overlap the
  reference's by ≥ 90% on average: what a search index would return stays
  what it was.

A sparse encoder's vectors are compared the same way, as vocabulary-wide
vectors. A cross-encoder's scores are compared on pairs made from the same set
(every 20th sentence as a query, against all 140 as documents: 980 pairs). It
passes when, per query,

- the Spearman rank correlation of its scores with the reference's is ≥ 0.99
  on average, and
- its 10 best documents are the reference's 10 best by ≥ 90% on average: a
  reranked list keeps its head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from embedloom.backends.base import Backend, TokenizedInput

__all__ = [
    "MIN_COSINE",
    "MIN_MEAN_COSINE",
    "MIN_NEIGHBOUR_OVERLAP",
    "MIN_SPEARMAN",
    "MIN_TOP_AGREEMENT",
    "NEIGHBOURS",
    "Gate",
    "GateFigures",
    "ScoreGateFigures",
    "calibration_texts",
    "embed_texts",
    "gate_from_json",
    "gate_outputs",
    "gate_pairs",
    "measure",
    "measure_outputs",
    "measure_scores",
]

MIN_MEAN_COSINE = 0.999
MIN_COSINE = 0.995
MIN_NEIGHBOUR_OVERLAP = 0.90
NEIGHBOURS = 10
MIN_SPEARMAN = 0.99
MIN_TOP_AGREEMENT = 0.90
# Every this many calibration sentences, one is a query of the score gate.
_QUERY_EVERY = 20

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


@dataclass(frozen=True, slots=True)
class ScoreGateFigures:
    """How closely a cross-encoder variant's scores rank the calibration pairs as
    the reference's do."""

    spearman: float
    top_agreement: float

    @property
    def passed(self) -> bool:
        return not self.shortfalls()

    def shortfalls(self) -> list[str]:
        missed = []
        if self.spearman < MIN_SPEARMAN:
            missed.append(f"mean Spearman {self.spearman:.5f} < {MIN_SPEARMAN}")
        if self.top_agreement < MIN_TOP_AGREEMENT:
            missed.append(
                f"top-{NEIGHBOURS} agreement {self.top_agreement:.1%} < {MIN_TOP_AGREEMENT:.0%}"
            )
        return missed

    def describe(self) -> str:
        return (
            f"mean Spearman {self.spearman:.5f}, "
            f"top-{NEIGHBOURS} agreement {self.top_agreement:.1%}"
        )

    def to_json(self) -> dict[str, float]:
        return asdict(self)


Gate = GateFigures | ScoreGateFigures


def gate_from_json(data: dict[str, Any]) -> Gate:
    """Figures as ``to_json`` wrote them, of whichever gate."""
    if "spearman" in data:
        return ScoreGateFigures(float(data["spearman"]), float(data["top_agreement"]))
    return GateFigures.from_json(data)


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


def gate_pairs(texts: Sequence[str]) -> list[tuple[str, str]]:
    """The score gate's pairs: every ``_QUERY_EVERY``-th text against all of them."""
    return [(query, document) for query in texts[::_QUERY_EVERY] for document in texts]


def gate_outputs(backend: Backend, texts: Sequence[str], *, batch_size: int = 32) -> Vectors:
    """What the gate compares for ``backend``'s kind of model: raw vectors, sparse
    vectors made dense, or the scores of ``gate_pairs``, in batches of similar
    length (as the engine's batcher forms them)."""
    if "score" in backend.tasks:
        tokenized = backend.tokenize_pairs(gate_pairs(texts))
        run = backend.score
    else:
        tokenized = backend.tokenize(texts)
        if "sparse" in backend.tasks:

            def run(batch: Sequence[TokenizedInput]) -> Vectors:
                dense = np.zeros((len(batch), backend.dimensions), dtype=np.float32)
                for row, vector in enumerate(backend.embed_sparse(batch)):
                    dense[row, vector.indices] = vector.values
                return dense

        else:
            run = backend.embed
    order = sorted(range(len(tokenized)), key=lambda i: tokenized[i].n_tokens)
    out = np.empty((len(tokenized), backend.dimensions), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        out[rows] = run([tokenized[i] for i in rows])
    return out


def measure_outputs(
    backend: Backend, reference: Vectors, candidate: Vectors, *, texts: int
) -> Gate:
    """Compare ``gate_outputs`` of ``texts`` texts from the reference and from
    ``backend``."""
    if "score" in backend.tasks:
        return measure_scores(reference, candidate, queries=len(reference) // texts)
    return measure(reference, candidate)


def measure_scores(reference: Vectors, candidate: Vectors, *, queries: int) -> ScoreGateFigures:
    """Compare two cross-encoders' scores of the same pairs, ``queries`` queries each
    against the same documents, query by query (and label by label)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    ref = reference.reshape(queries, -1, reference.shape[1]).transpose(0, 2, 1)
    cand = candidate.reshape(queries, -1, candidate.shape[1]).transpose(0, 2, 1)
    spearman, agreement = [], []
    for ref_scores, cand_scores in zip(
        ref.reshape(-1, ref.shape[2]), cand.reshape(-1, cand.shape[2]), strict=True
    ):
        spearman.append(np.corrcoef(_ranks(ref_scores), _ranks(cand_scores))[0, 1])
        k = min(NEIGHBOURS, len(ref_scores))
        best_ref = set(np.argsort(-ref_scores, kind="stable")[:k])
        best_cand = set(np.argsort(-cand_scores, kind="stable")[:k])
        agreement.append(len(best_ref & best_cand) / k)
    return ScoreGateFigures(float(np.mean(spearman)), float(np.mean(agreement)))


def _ranks(values: Vectors) -> npt.NDArray[np.float64]:
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks


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
