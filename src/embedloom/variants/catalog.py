"""The ways to run one model: a backend and a dtype, which this machine supports,
and how to open each.

``torch/fp32`` is the reference every other variant is measured against (see
``embedloom.variants.gate``); the others exist to be faster on the right hardware.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

from embedloom._version import __version__
from embedloom.backends.base import BackendFactory
from embedloom.cpu import cpu_flags, cpu_model
from embedloom.errors import BackendError
from embedloom.store import ModelStore

__all__ = [
    "REFERENCE",
    "SLOW_TO_BUILD",
    "VARIANTS",
    "Variant",
    "gpus_for",
    "is_built",
    "machine_key",
    "open_variant",
    "openvino_export",
    "requested_variants",
    "unsupported_reason",
]


@dataclass(frozen=True, slots=True, order=True)
class Variant:
    backend: str  # torch | onnx | openvino
    dtype: str  # fp32 | bf16 | fp16 | int8

    def __str__(self) -> str:
        return f"{self.backend}/{self.dtype}"

    @classmethod
    def parse(cls, text: str) -> Variant:
        backend, _, dtype = text.partition("/")
        return cls(backend, dtype)


REFERENCE = Variant("torch", "fp32")
VARIANTS = (
    REFERENCE,
    Variant("torch", "bf16"),
    Variant("torch", "fp16"),
    Variant("onnx", "fp32"),
    Variant("onnx", "int8"),
    Variant("openvino", "fp32"),
    Variant("openvino", "bf16"),
    Variant("openvino", "int8"),
)
SLOW_TO_BUILD = frozenset({Variant("openvino", "int8")})
"""Variants whose build takes minutes (a calibrated, accuracy-searched quantisation):
built only when asked (``embedloom variants --build``); until then ``auto`` chooses
among the others and says so."""
# Bumped when an export's contents change meaning, so old ones are not reused.
_EXPORT_FORMAT = 1
# CPU features that make bf16 matrix work fast (without them torch emulates it,
# slower than fp32).
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def gpus_for(backend: str) -> int:
    """The GPUs ``--backend`` could run on: none for ONNX Runtime and OpenVINO, which
    embedloom runs on the CPU only, and which then start without importing torch
    (two seconds of every start)."""
    if backend in ("onnx", "openvino"):
        return 0
    from embedloom.backends.torch import cuda_device_count

    return cuda_device_count()


def requested_variants(backend: str, dtype: str) -> list[Variant]:
    """The variants ``--backend``/``--dtype`` allow (``auto`` allows every one)."""
    chosen = [v for v in VARIANTS if backend in ("auto", v.backend) and dtype in ("auto", v.dtype)]
    if not chosen:
        offered = ", ".join(str(v) for v in VARIANTS)
        raise BackendError(f"no variant {backend}/{dtype}: embedloom offers {offered}")
    return chosen


def unsupported_reason(
    variant: Variant,
    device: str,
    flags: frozenset[str] | None = None,
    *,
    kind: str = "embedding",
) -> str | None:
    """Why ``variant`` cannot run (fast) on ``device`` for a model of ``kind``
    (``tasks.ModelKind``), or None when it can; ``flags`` are the CPU's features
    (default: this machine's)."""
    if variant.backend in ("onnx", "openvino") and (
        reason := _graph_unsupported(variant, device, kind)
    ):
        return reason
    if variant.dtype == "fp16" and device == "cpu":
        return "fp16 has no fast CPU kernels; it is for GPUs"
    if (
        variant.dtype == "bf16"
        and device == "cpu"
        and not (_BF16_FLAGS & (cpu_flags() if flags is None else flags))
    ):
        return "this CPU has neither AVX512-BF16 nor AMX-BF16 (bf16 would be emulated)"
    return None


def _graph_unsupported(variant: Variant, device: str, kind: str) -> str | None:
    """Why an exported graph (ONNX, OpenVINO) cannot run ``variant`` here."""
    runtime = "ONNX" if variant.backend == "onnx" else "OpenVINO"
    if kind != "embedding":
        return f"the {runtime} export covers embedding models; this is a {kind} model"
    if device != "cpu":
        return f"the {runtime} backend runs on CPU only"
    if variant.backend == "onnx":
        from embedloom.backends.onnx import onnxruntime_missing

        return onnxruntime_missing()
    from embedloom.backends.openvino import openvino_missing

    return openvino_missing()


def machine_key(device: str) -> str:
    """Names what a speed or accuracy measurement depends on besides the model: the
    processor, its features, and the versions of the libraries doing the arithmetic."""
    # torch's version from its metadata (the same string as torch.__version__): a
    # start on ONNX Runtime or OpenVINO never imports torch.
    parts = [platform.machine(), cpu_model(), " ".join(sorted(cpu_flags())), device]
    parts += [version("torch"), __version__, _onnxruntime_version(), _openvino_version()]
    if device.startswith("cuda"):
        import torch

        parts.append(torch.cuda.get_device_name(device))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def open_variant(
    variant: Variant,
    model_dir: Path,
    store: ModelStore,
    *,
    threads: int,
    device: str,
    preload: bool = False,
) -> BackendFactory:
    """A factory of backends running ``variant``; ONNX exports are built (once per
    machine) now. With ``preload`` torch weights are read now and shared by every
    backend the factory makes (see ``PreloadedModel``)."""
    if variant.backend == "torch":
        from embedloom.backends.torch import PreloadedModel, TorchBackend

        preloaded = (
            PreloadedModel.load(model_dir, device=device, dtype=variant.dtype) if preload else None
        )
        return lambda: TorchBackend(
            model_dir, device=device, threads=threads, dtype=variant.dtype, preloaded=preloaded
        )
    if variant.backend == "openvino":
        from embedloom.backends.openvino import OpenVinoBackend

        converted = openvino_export(variant, model_dir, store)
        return lambda: OpenVinoBackend(converted, dtype=variant.dtype, threads=threads)
    from embedloom.backends.onnx import OnnxBackend

    export = onnx_export(variant, model_dir, store)
    return lambda: OnnxBackend(export, dtype=variant.dtype, threads=threads)


def onnx_export(variant: Variant, model_dir: Path, store: ModelStore) -> Path:
    """The directory of ``variant``'s ONNX export, built if this machine has none.
    int8 is quantised from the fp32 export, which is only looked at (and built if
    need be) when int8 itself has to be built."""
    return _export(variant, model_dir, store, _exporter)


def openvino_export(variant: Variant, model_dir: Path, store: ModelStore) -> Path:
    """The directory of ``variant``'s OpenVINO model, built if this machine has none
    (fp32 and bf16 share one: bf16 is a compile-time hint); int8 is quantised from
    the fp32 model, as ONNX's is."""
    return _export(variant, model_dir, store, _converter)


def _export(
    variant: Variant, model_dir: Path, store: ModelStore, builder: Callable[[], ModuleType]
) -> Path:
    """The derived entry ``<backend>-v<format>-<dtype>`` of ``variant``: an fp32 graph
    built by ``builder().export_fp32``, or an int8 one by ``export_int8`` from it."""

    def fp32() -> Path:
        return store.derived(
            model_dir,
            _export_name(variant.backend, "fp32"),
            lambda into: builder().export_fp32(model_dir, into),
        )

    if variant.dtype != "int8":
        return fp32()
    return store.derived(
        model_dir,
        _export_name(variant.backend, "int8"),
        lambda into: builder().export_int8(fp32(), into),
    )


def _export_name(backend: str, dtype: str) -> str:
    return f"{backend}-v{_EXPORT_FORMAT}-{dtype}"


def is_built(variant: Variant, model_dir: Path, store: ModelStore) -> bool:
    """Whether ``variant``'s export is on this machine already (always, for torch)."""
    if variant.backend == "torch":
        return True
    dtype = "int8" if variant.dtype == "int8" else "fp32"
    return store.has_derived(model_dir, _export_name(variant.backend, dtype))


def _converter() -> ModuleType:
    from embedloom.backends import openvino_export

    return openvino_export


def _exporter() -> ModuleType:
    # Imported only to build an export: it needs torch, which serving an export does not.
    from embedloom.backends import onnx_export

    return onnx_export


def _openvino_version() -> str:
    try:
        import openvino
    except ImportError:
        return "no openvino"
    return str(openvino.__version__)


def _onnxruntime_version() -> str:
    try:
        import onnxruntime
    except ImportError:
        return "no onnxruntime"
    return str(onnxruntime.__version__)
