"""A sentence-transformers model converted to OpenVINO and run by its CPU plugin.

The converted model is the same graph as the ONNX export (every module but the
final ``Normalize``, so its output is what ``TorchBackend.embed`` returns), in
OpenVINO's own format (``model.xml`` + ``model.bin``), with the tokenizer and
the model's shape beside it (``embedloom.json``): loading it needs neither torch
nor sentence-transformers. One conversion serves fp32 and bf16 (a compile-time
precision hint); int8 is a separate, quantised model.

Conversions are built by ``openvino_export`` once per machine (``ModelStore.derived``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedloom.backends.base import Task, TokenizedInput
from embedloom.backends.onnx import export_text
from embedloom.backends.text import EncoderBackend
from embedloom.errors import BackendError
from embedloom.offload import refuse_on_event_loop

__all__ = ["MODEL_XML", "OpenVinoBackend", "openvino_missing"]

MODEL_XML = "model.xml"
# What OpenVINO calls each of our dtypes when it is a compile-time hint (int8 is in
# the model itself: its matrices run in int8 whatever the hint, the rest in fp32).
_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
_core_lock = threading.Lock()
_core: Any = None


def openvino_missing() -> str | None:
    """Why the OpenVINO backend cannot run here, or None when it can."""
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"openvino is not installed ({exc})"
    return None


def _openvino_core() -> Any:
    # One Core per process: it owns the CPU plugin and its thread pools; compiled
    # models of every replica come from it.
    global _core
    with _core_lock:
        if _core is None:
            import openvino

            _core = openvino.Core()
        return _core


class OpenVinoBackend(EncoderBackend):
    """One compiled model with one inference request; ``embed`` runs on the owning
    thread, with at most ``threads`` of OpenVINO's threads computing for it."""

    name = "openvino"
    # The graph pools inside: its only output is the pooled vector.
    tasks: tuple[Task, ...] = ("embed",)

    def __init__(self, model_dir: Path, *, dtype: str, threads: int = 0) -> None:
        if dtype not in _PRECISION_HINT:
            raise BackendError(f"the OpenVINO backend runs fp32, bf16 or int8, not {dtype}")
        self.dtype = dtype
        super().__init__(**export_text(model_dir))
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _PRECISION_HINT[dtype],
            # One stream: the engine's sharing plan decides how many models run at
            # once, each on its budget of threads; OpenVINO must not add its own.
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            # Replicas each compile their own model; pinned, they would all pin the
            # same first cores.
            "ENABLE_CPU_PINNING": False,
        }
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            core = _openvino_core()
            self._compiled = core.compile_model(str(model_dir / MODEL_XML), "CPU", config)
        except Exception as exc:  # OpenVINO raises its own untyped errors
            raise BackendError(
                f"could not compile the OpenVINO model in {model_dir}: {exc}"
            ) from exc
        self._request = self._compiled.create_infer_request()
        self._inputs = tuple(port.get_any_name() for port in self._compiled.inputs)

    def compute_threads(self) -> int:
        return int(self._compiled.get_property("INFERENCE_NUM_THREADS"))

    def embed(self, batch: Sequence[TokenizedInput]) -> npt.NDArray[np.float32]:
        refuse_on_event_loop("OpenVinoBackend.embed")
        if not batch:
            return self.no_vectors()
        arrays = self.text.collate(batch)
        # share_inputs: the arrays are ours until the call returns, so no copy.
        self._request.infer({name: arrays[name] for name in self._inputs}, share_inputs=True)
        pooled = self._request.get_output_tensor(0).data
        # The output tensor is the request's own buffer, overwritten by the next call.
        return np.array(pooled, dtype=np.float32, copy=True)

    def embed_tokens(self, batch: Sequence[TokenizedInput]) -> list[npt.NDArray[np.float32]]:
        raise BackendError("the OpenVINO model pools inside its graph: no per-token vectors")

    def __repr__(self) -> str:
        return (
            f"<OpenVinoBackend dtype={self.dtype} dims={self._dimensions} "
            f"max_tokens={self.text.max_tokens} normalizes={self._normalizes}>"
        )
