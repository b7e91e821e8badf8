"""The ways to run one model: a backend and a dtype, which this machine supports,
and how to open each.

``torch/fp32`` is the reference every other variant is measured against (see
``embedloom.variants.gate``); the others exist to be faster on the right hardware.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from embedloom._version import __version__
from embedloom.backends.base import BackendFactory
from embedloom.cpu import cpu_flags, cpu_model
from embedloom.errors import BackendError
from embedloom.store import ModelStore

__all__ = [
    "REFERENCE",
    "VARIANTS",
    "Variant",
    "machine_key",
    "open_variant",
    "requested_variants",
    "unsupported_reason",
]


@dataclass(frozen=True, slots=True, order=True)
class Variant:
    backend: str  # torch | onnx
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
)
# Bumped when an export's contents change meaning, so old ones are not reused.
_EXPORT_FORMAT = 1
# CPU features that make bf16 matrix work fast (without them torch emulates it,
# slower than fp32).
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


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
    if variant.backend == "onnx":
        if kind != "embedding":
            return f"the ONNX export covers embedding models; this is a {kind} model"
        if device != "cpu":
            return "the ONNX backend runs on CPU only"
        from embedloom.backends.onnx import onnxruntime_missing

        return onnxruntime_missing()
    if variant.dtype == "fp16" and device == "cpu":
        return "fp16 has no fast CPU kernels; it is for GPUs"
    if (
        variant.dtype == "bf16"
        and device == "cpu"
        and not (_BF16_FLAGS & (cpu_flags() if flags is None else flags))
    ):
        return "this CPU has neither AVX512-BF16 nor AMX-BF16 (bf16 would be emulated)"
    return None


def machine_key(device: str) -> str:
    """Names what a speed or accuracy measurement depends on besides the model: the
    processor, its features, and the versions of the libraries doing the arithmetic."""
    import torch

    parts = [platform.machine(), cpu_model(), " ".join(sorted(cpu_flags())), device]
    parts += [torch.__version__, __version__, _onnxruntime_version()]
    if device.startswith("cuda"):
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
    from embedloom.backends.onnx import OnnxBackend

    export = onnx_export(variant, model_dir, store)
    return lambda: OnnxBackend(export, dtype=variant.dtype, threads=threads)


def onnx_export(variant: Variant, model_dir: Path, store: ModelStore) -> Path:
    """The directory of ``variant``'s ONNX export, built if this machine has none.
    int8 is quantised from the fp32 export, which is only looked at (and built if
    need be) when int8 itself has to be built."""

    def fp32() -> Path:
        return store.derived(
            model_dir,
            f"onnx-v{_EXPORT_FORMAT}-fp32",
            lambda into: _exporter().export_fp32(model_dir, into),
        )

    if variant.dtype == "fp32":
        return fp32()
    return store.derived(
        model_dir,
        f"onnx-v{_EXPORT_FORMAT}-{variant.dtype}",
        lambda into: _exporter().export_int8(fp32(), into),
    )


def _exporter() -> ModuleType:
    # Imported only to build an export: it needs torch, which serving an export does not.
    from embedloom.backends import onnx_export

    return onnx_export


def _onnxruntime_version() -> str:
    try:
        import onnxruntime
    except ImportError:
        return "no onnxruntime"
    return str(onnxruntime.__version__)
