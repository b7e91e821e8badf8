"""What kind of model a directory holds, and so which tasks it can serve.

sentence-transformers (≥ 5) records the class a model was saved from in
``config_sentence_transformers.json`` (``model_type``): ``SentenceTransformer``
(dense embeddings), ``CrossEncoder`` (a sequence-classification head over a
text pair: one output is a relevance score, several are labels) or
``SparseEncoder`` (SPLADE: a masked-LM head, max-pooled ``log(1 + relu)``).
Older directories and plain Hugging Face rerankers say it through their
modules or their architecture, and are recognised by those.

A cross-encoder's scores pass through its activation as ``CrossEncoder.predict``
applies it (the model's ``activation_fn``; sigmoid for one output, none for
several, when it names none), so raw scores can be asked for and activated
later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from embedloom.backends.base import Task
from embedloom.model_files import config_json, module_list

__all__ = [
    "KIND_TASKS",
    "Activation",
    "ModelKind",
    "ScoreHead",
    "activate",
    "model_kind",
    "score_head",
    "what_it_does",
]

ModelKind = Literal["embedding", "cross-encoder", "sparse"]
Activation = Literal["sigmoid", "softmax", "identity"]

# The tasks each kind of model can run, before a backend narrows them.
KIND_TASKS: dict[ModelKind, tuple[Task, ...]] = {
    "embedding": ("embed", "tokens"),
    "cross-encoder": ("score",),
    "sparse": ("sparse",),
}

_WHAT_IT_DOES: dict[ModelKind, str] = {
    "embedding": "an embedding model: it embeds texts (POST /embed, /v1/embeddings) and "
    "ranks documents by cosine (POST /rerank)",
    "cross-encoder": "a cross-encoder: it scores texts and text pairs (POST /rerank, "
    "/predict, /score)",
    "sparse": "a sparse (SPLADE) embedding model: it embeds texts as sparse vectors "
    "(POST /embed_sparse)",
}

_KINDS_BY_TYPE: dict[str, ModelKind] = {
    "SentenceTransformer": "embedding",
    "CrossEncoder": "cross-encoder",
    "SparseEncoder": "sparse",
}

# sentence-transformers' activation classes → ours.
_ACTIVATIONS: dict[str, Activation] = {
    "Sigmoid": "sigmoid",
    "Softmax": "softmax",
    "Identity": "identity",
}


def what_it_does(kind: ModelKind) -> str:
    """A phrase naming the kind of model and the routes it answers."""
    return _WHAT_IT_DOES[kind]


def model_kind(model_dir: Path) -> ModelKind:
    """Which kind of model ``model_dir`` holds (``embedding`` when nothing says
    otherwise: an embedding model needs no marker)."""
    saved_as = config_json(model_dir / "config_sentence_transformers.json").get("model_type")
    if isinstance(saved_as, str) and saved_as in _KINDS_BY_TYPE:
        return _KINDS_BY_TYPE[saved_as]
    module_types = [str(m.get("type", "")) for m in module_list(model_dir)]
    if any(t.endswith(("MLMTransformer", "SpladePooling")) for t in module_types):
        return "sparse"
    if not module_types:
        # A plain Hugging Face directory: a classification head makes it a reranker
        # (bge-reranker, ms-marco cross-encoders saved by older sentence-transformers).
        architectures = config_json(model_dir / "config.json").get("architectures")
        if isinstance(architectures, list) and any(
            str(a).endswith("ForSequenceClassification") for a in architectures
        ):
            return "cross-encoder"
    return "embedding"


@dataclass(frozen=True, slots=True)
class ScoreHead:
    """A cross-encoder's outputs: their labels, in order, and the activation
    ``CrossEncoder.predict`` applies to them."""

    labels: tuple[str, ...]
    activation: Activation

    @property
    def id2label(self) -> dict[str, str]:
        return {str(index): label for index, label in enumerate(self.labels)}


def score_head(model_dir: Path) -> ScoreHead:
    """The head of the cross-encoder at ``model_dir``."""
    config: dict[str, Any] = config_json(model_dir / "config.json")
    mapping = config.get("id2label") or {}
    count = int(config.get("num_labels") or len(mapping) or 1)
    labels = tuple(str(mapping.get(str(i), f"LABEL_{i}")) for i in range(count))
    named = config_json(model_dir / "config_sentence_transformers.json").get("activation_fn")
    if named is None:  # where sentence-transformers < 5 kept it
        named = (config.get("sentence_transformers") or {}).get("activation_fn")
    activation: Activation = "sigmoid" if count == 1 else "identity"
    if isinstance(named, str):
        activation = _ACTIVATIONS.get(named.rsplit(".", 1)[-1], activation)
    return ScoreHead(labels, activation)


def activate(scores: npt.NDArray[np.float32], activation: Activation) -> npt.NDArray[np.float32]:
    """``scores`` (one row per input) through ``activation``."""
    if activation == "sigmoid":
        return np.asarray(1.0 / (1.0 + np.exp(-scores)), dtype=np.float32)
    if activation == "softmax":
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float32)
    return scores
