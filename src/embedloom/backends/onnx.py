"""A sentence-transformers model exported to ONNX and run by ONNX Runtime.

The export holds the whole module list but the final ``Normalize`` (transformer
→ pooling → dense …), so the graph's output is what ``TorchBackend.embed``
returns. Next to ``model.onnx`` an export keeps the tokenizer and the model's
shape (``embedloom.json``): loading it needs neither torch nor
sentence-transformers.

Exports are built by ``onnx_export`` once per machine (``ModelStore.derived``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedloom.backends.base import Task, TokenizedInput
from embedloom.backends.text import EncoderBackend, TextEncoder
from embedloom.errors import BackendError
from embedloom.offload import refuse_on_event_loop

__all__ = [
    "MODEL_FILE",
    "SHAPE_FILE",
    "TOKENIZER_FILE",
    "OnnxBackend",
    "export_text",
    "onnxruntime_missing",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
SHAPE_FILE = "embedloom.json"
TOKENIZER_FILE = "tokenizer.json"


def onnxruntime_missing() -> str | None:
    """Why the ONNX backend cannot run here, or None when it can."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc})"
    return None


def export_text(export_dir: Path) -> dict[str, Any]:
    """``EncoderBackend``'s arguments from the files beside an exported graph (the
    tokenizer and the model's shape), as ``onnx_export.write_shape`` wrote them."""
    shape = json.loads((export_dir / SHAPE_FILE).read_text())
    text = TextEncoder(
        (export_dir / TOKENIZER_FILE).read_text(),
        max_tokens=int(shape["max_tokens"]),
        pad_id=int(shape["pad_id"]),
        pad_left=bool(shape["pad_left"]),
    )
    return {
        "text": text,
        "dimensions": int(shape["dimensions"]),
        "normalizes": bool(shape["normalizes"]),
    }


class OnnxBackend(EncoderBackend):
    """One ONNX Runtime session over an export; ``embed`` runs on the owning thread."""

    name = "onnx"
    # The graph pools inside: its only output is the pooled vector.
    tasks: tuple[Task, ...] = ("embed",)

    def __init__(self, export_dir: Path, *, dtype: str, threads: int = 0) -> None:
        import onnxruntime as ort

        self.dtype = dtype
        super().__init__(**export_text(export_dir))
        options = ort.SessionOptions()
        # One session per inference thread, sized from the thread budget like
        # torch's pool; nothing inside a session runs in parallel branches.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(export_dir / MODEL_FILE), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BackendError(f"could not load the ONNX model in {export_dir}: {exc}") from exc
        self._inputs = tuple(i.name for i in self._session.get_inputs())
        self._threads = threads

    def compute_threads(self) -> int:
        # ONNX Runtime does not report its pool's size; 0 asked it for one per core.
        if self._threads > 0:
            return self._threads
        from embedloom.threads import usable_cores

        return usable_cores().usable

    def embed(self, batch: Sequence[TokenizedInput]) -> npt.NDArray[np.float32]:
        refuse_on_event_loop("OnnxBackend.embed")
        if not batch:
            return self.no_vectors()
        arrays = self.text.collate(batch)
        (pooled,) = self._session.run(None, {name: arrays[name] for name in self._inputs})
        return np.ascontiguousarray(pooled, dtype=np.float32)

    def embed_tokens(self, batch: Sequence[TokenizedInput]) -> list[npt.NDArray[np.float32]]:
        raise BackendError("the ONNX export pools inside its graph: no per-token vectors")

    def __repr__(self) -> str:
        return (
            f"<OnnxBackend dtype={self.dtype} dims={self._dimensions} "
            f"max_tokens={self.text.max_tokens} normalizes={self._normalizes}>"
        )
