"""Building OpenVINO models of a sentence-transformers model (once per machine).

``export_fp32`` traces the model to ONNX (unfused: OpenVINO does its own fusing,
and the quantiser needs the plain graph) and converts it to OpenVINO's format,
weights kept in fp32 (its writer halves them by default). ``export_int8``
quantises that model statically with NNCF: activation ranges calibrated on a
corpus shipped for the purpose (``data/quantization.txt``, not the accuracy
gate's set), the transformer preset (which keeps softmax, layer norm and GELU in
floating point) and SmoothQuant. Where the result strays from fp32 on the
calibration corpus by more than the gate allows, the search keeps whole roles of
matrix multiply (every layer's FFN output, say) in fp32, the most helpful role
first, until it does not: a few minutes on two cores, so it runs only when asked
(``embedloom variants --build``), never on a server's first start.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from embedloom.backends.onnx import SHAPE_FILE, TOKENIZER_FILE, export_text
from embedloom.backends.openvino import MODEL_XML
from embedloom.backends.text import TextEncoder
from embedloom.errors import BackendError

__all__ = ["export_fp32", "export_int8", "int8_missing"]

logger = logging.getLogger(__name__)

_ROLES_FILE = "fp32-roles.txt"
# The calibration corpus is cut into batches this size (longest first, as real
# batches are padded) for the statistics and the validation.
_CALIBRATION_BATCH = 16


def int8_missing() -> str | None:
    """Why an int8 OpenVINO model cannot be built here, or None when it can."""
    try:
        import nncf  # noqa: F401
    except ImportError as exc:
        return f"nncf is not installed ({exc}): pip install 'embedloom[int8]'"
    return None


def export_fp32(model_dir: Path, into: Path) -> None:
    """Trace the model at ``model_dir`` and convert it to ``into/model.xml``."""
    import openvino

    from embedloom.backends.onnx_export import trace, write_shape

    with tempfile.TemporaryDirectory(prefix="embedloom-trace-") as scratch:
        traced = Path(scratch) / "traced.onnx"
        reference, _ = trace(model_dir, traced)
        model = openvino.convert_model(traced)
        openvino.save_model(model, into / MODEL_XML, compress_to_fp16=False)
    write_shape(reference, into)
    logger.info("converted %s to OpenVINO", model_dir)


def export_int8(fp32_model: Path, into: Path) -> None:
    """Statically quantised int8 model of an ``export_fp32`` result; the roles kept
    in fp32 (if any) are listed in ``fp32-roles.txt``."""
    import openvino

    from embedloom.variants.gate import measure

    if (missing := int8_missing()) is not None:
        raise BackendError(f"cannot build the int8 OpenVINO model: {missing}")
    core = openvino.Core()
    model = core.read_model(fp32_model / MODEL_XML)
    # The tokenizer beside the model, not a compiled backend: nothing here runs it.
    batches = _batches(export_text(fp32_model)["text"], _calibration_corpus())
    reference = _vectors(core, model, batches)

    def quantized(keep: Sequence[str]) -> tuple[Any, float, bool]:
        candidate = _quantize(model, batches, keep)
        figures = measure(reference, _vectors(core, candidate, batches))
        return candidate, figures.mean_cosine, figures.passed

    started = time.monotonic()
    keep: list[str] = []
    candidate, score, passed = quantized(keep)
    roles = _roles_by_outliers(core, model, batches)
    while not passed and len(keep) < len(roles):
        # The likeliest culprit first (outliers are what int8's one scale per tensor
        # cannot hold), stopping at the first role whose fp32 makes it pass.
        trials = {}
        for role in (r for r in roles if r not in keep):
            trials[role] = quantized([*keep, role])
            if trials[role][2]:
                break
        best = max(trials, key=lambda role: trials[role][1])
        keep.append(best)
        candidate, score, passed = trials[best]
        logger.info("int8: kept %s in fp32 (mean cosine %.5f on calibration)", best, score)
    logger.info(
        "int8: quantised in %.0f s, fp32 roles %s, mean cosine %.5f on calibration",
        time.monotonic() - started,
        keep or "none",
        score,
    )
    openvino.save_model(candidate, into / MODEL_XML, compress_to_fp16=False)
    (into / _ROLES_FILE).write_text("".join(f"{role}\n" for role in keep))
    for name in (SHAPE_FILE, TOKENIZER_FILE):
        (into / name).write_bytes((fp32_model / name).read_bytes())


def _calibration_corpus() -> list[str]:
    text = resources.files("embedloom").joinpath("data/quantization.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line.strip()]


def _batches(text: TextEncoder, texts: list[str]) -> list[dict[str, Any]]:
    tokens = sorted(text.tokenize(texts), key=lambda t: -t.n_tokens)
    return [
        text.collate(tokens[i : i + _CALIBRATION_BATCH])
        for i in range(0, len(tokens), _CALIBRATION_BATCH)
    ]


def _vectors(core: Any, model: Any, batches: list[dict[str, Any]]) -> Any:
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    names = [port.get_any_name() for port in compiled.inputs]
    return np.concatenate([compiled({name: feed[name] for name in names})[0] for feed in batches])


def _quantize(model: Any, batches: list[dict[str, Any]], keep: Sequence[str]) -> Any:
    import nncf

    names = [port.get_any_name() for port in model.inputs]
    dataset = nncf.Dataset(batches, lambda feed: {name: feed[name] for name in names})
    ignored = [op for op in _matmuls(model) if _role(op) in keep]
    return nncf.quantize(
        model,
        dataset,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(batches),
        ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
    )


def _matmuls(model: Any) -> list[str]:
    return [
        op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"
    ]


_LAYER_INDEX = re.compile(r"\.\d+(?=/|$)|_\d+$")


def _role(op_name: str) -> str:
    """What a matrix multiply does, the same in every layer: its name without layer
    numbers (``/encoder/layer/output/dense/MatMul``)."""
    return _LAYER_INDEX.sub("", op_name)


def _roles_by_outliers(core: Any, model: Any, batches: list[dict[str, Any]]) -> list[str]:
    """The roles of matrix multiply, those whose activations have the widest outliers
    (largest magnitude ÷ root mean square, on the calibration batches) first."""
    probe = model.clone()
    matmuls = [op for op in probe.get_ordered_ops() if op.get_type_name() == "MatMul"]
    probe.add_outputs([op.input_value(0) for op in matmuls])
    first_added = len(probe.outputs) - len(matmuls)
    compiled = core.compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    names = [port.get_any_name() for port in compiled.inputs]
    peak = np.zeros(len(matmuls))
    squares = np.zeros(len(matmuls))
    count = np.zeros(len(matmuls))
    for feed in batches:
        outputs = compiled({name: feed[name] for name in names})
        for i in range(len(matmuls)):
            values = np.asarray(outputs[first_added + i], dtype=np.float64)
            peak[i] = max(peak[i], float(np.abs(values).max()))
            squares[i] += float(np.square(values).sum())
            count[i] += values.size
    spread: dict[str, float] = {}
    for i, op in enumerate(matmuls):
        ratio = peak[i] / max(np.sqrt(squares[i] / max(count[i], 1)), 1e-12)
        role = _role(op.get_friendly_name())
        spread[role] = max(spread.get(role, 0.0), ratio)
    return sorted(spread, key=lambda role: -spread[role])
