"""Building ONNX exports of a sentence-transformers model (slow; once per machine).

``export_fp32`` traces the model (attention in its eager form, the one ONNX
Runtime's transformer optimiser recognises) and fuses attention, layer norm and
GELU; ``export_int8`` quantises the fused graph's weights per channel to int8
(activations are quantised per batch, at run time: dynamic quantisation). Each
writes a directory ``OnnxBackend`` loads; ``ModelStore.derived`` decides when to
build one and publishes it.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch

from embedloom.backends.onnx import MODEL_FILE, SHAPE_FILE, TOKENIZER_FILE
from embedloom.backends.torch import PreloadedModel, TorchBackend

__all__ = ["export_fp32", "export_int8", "trace", "write_shape"]

logger = logging.getLogger(__name__)

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_OPSET = 17


class _Pooled(torch.nn.Module):
    """The module list as one module with positional inputs, for the tracer."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        super().__init__()
        self.stages = torch.nn.ModuleList(modules)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        features = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }
        for stage in self.stages:
            features = stage(features)
        return features["sentence_embedding"]


def trace(model_dir: Path, onnx_file: Path) -> tuple[TorchBackend, list[torch.nn.Module]]:
    """Trace the model at ``model_dir`` (all its modules but a final ``Normalize``) to
    ``onnx_file``, unfused; the reference it was traced from and its modules."""
    # Eager attention traces to the MatMul/Softmax pattern the optimiser fuses into
    # one Attention node; the SDPA form traces to a graph it does not recognise.
    preloaded = PreloadedModel.load(model_dir, model_kwargs={"attn_implementation": "eager"})
    reference = TorchBackend(model_dir, preloaded=preloaded)
    modules = list(preloaded.model.children())
    if reference.normalizes:
        modules = modules[:-1]
    graph = _Pooled(modules).eval()
    sample = torch.ones((2, 8), dtype=torch.int64)
    axes = {name: {0: "batch", 1: "tokens"} for name in _INPUTS}
    with warnings.catch_warnings():
        # The tracer warns about shape checks it freezes into the graph (pooling's
        # "mask as long as the tokens", always true here); the accuracy gate, not
        # these warnings, decides whether the export is right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (sample, sample, torch.zeros_like(sample)),
            str(onnx_file),
            input_names=list(_INPUTS),
            output_names=["sentence_embedding"],
            dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
            opset_version=_OPSET,
            dynamo=False,
        )
    return reference, modules


def export_fp32(model_dir: Path, into: Path) -> None:
    """Trace the model at ``model_dir`` to ``into/model.onnx`` and fuse its graph."""
    from onnxruntime.transformers import optimizer

    traced = into / "traced.onnx"
    reference, modules = trace(model_dir, traced)
    config = getattr(modules[0], "auto_model", None)
    config = getattr(config, "config", None)
    fused = optimizer.optimize_model(
        str(traced),
        model_type="bert",
        num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
        hidden_size=int(getattr(config, "hidden_size", 0) or 0),
        opt_level=0,
    )
    fused.save_model_to_file(str(into / MODEL_FILE))
    traced.unlink()
    logger.info(
        "exported %s to ONNX; fused: %s",
        model_dir,
        {op: n for op, n in fused.get_fused_operator_statistics().items() if n},
    )
    write_shape(reference, into)


def export_int8(fp32_export: Path, into: Path) -> None:
    """Dynamic int8 quantisation of an ``export_fp32`` result."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        quantize_dynamic(
            fp32_export / MODEL_FILE,
            into / MODEL_FILE,
            weight_type=QuantType.QInt8,
            # Per output channel: MiniLM's weights differ in range by column, and one
            # scale per matrix costs it a further 4% of cosine.
            per_channel=True,
            # Fused nodes (SkipLayerNormalization, BiasGelu) carry no type information
            # for the quantiser's shape inference; they are float32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.removeFilter(_no_preprocessing_advice)
    for name in (SHAPE_FILE, TOKENIZER_FILE):
        (into / name).write_bytes((fp32_export / name).read_bytes())


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    # The quantiser advises, on the root logger, a shape-inference pass meant for
    # static quantisation of image models; it does not apply to this graph.
    return "pre-processing before quantization" not in record.getMessage()


def write_shape(reference: TorchBackend, into: Path) -> None:
    """The files beside a graph that let a backend run it without torch: the
    model's shape and its tokenizer."""
    text = reference.text
    shape = {
        "dimensions": reference.dimensions,
        "normalizes": reference.normalizes,
        "max_tokens": text.max_tokens,
        "pad_id": text.pad_id,
        "pad_left": text.pad_left,
    }
    (into / SHAPE_FILE).write_text(json.dumps(shape, indent=1))
    (into / TOKENIZER_FILE).write_text(text.to_json())
