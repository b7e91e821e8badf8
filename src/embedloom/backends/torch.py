"""A sentence-transformers model on PyTorch.

The model's own module list (transformer → pooling → [dense …] → [normalize])
is run as configured, so vectors match ``SentenceTransformer(path).encode``.
Two things differ on purpose: tokenisation happens per request, ahead of
batching (the batcher needs token counts), and a trailing ``Normalize`` module
is left to the engine so a caller can ask for raw vectors (TEI's
``normalize=false``) and so truncated dimensions can be re-normalised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from embedloom.backends.base import SparseVector, Task, TokenizedInput
from embedloom.backends.text import EncoderBackend, TextEncoder
from embedloom.errors import BackendError
from embedloom.offload import refuse_on_event_loop
from embedloom.tasks import KIND_TASKS, ModelKind, model_kind

__all__ = ["TORCH_DTYPES", "TorchBackend", "cuda_device_count"]

logger = logging.getLogger(__name__)

_LOADING = threading.Lock()

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBackend(EncoderBackend):
    """Holds one loaded model — an embedding model, a cross-encoder or a sparse
    encoder (``tasks.model_kind``); its tasks run on the owning thread only."""

    name = "torch"

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str | None = None,
        threads: int = 0,
        dtype: str = "fp32",
        preloaded: PreloadedModel | None = None,
    ) -> None:
        """Load the model in ``dtype`` (fp32, bf16, fp16), or adopt ``preloaded``
        (loaded before a fork, shared copy-on-write). ``threads`` > 0 sizes torch's
        intra-op pool of the calling thread (the inference thread that will own
        this backend): see ``sharing``."""
        if threads > 0:
            torch.set_num_threads(threads)
        _single_interop_thread()
        if preloaded is None:
            preloaded = PreloadedModel.load(model_dir, device=device, dtype=dtype)
        model = preloaded.model
        self.kind: ModelKind = preloaded.kind
        self.tasks: tuple[Task, ...] = KIND_TASKS[self.kind]
        self._device = preloaded.device
        self.dtype = preloaded.dtype
        model.eval()
        self._model = model
        modules = list(model.children())
        normalizes = bool(modules) and type(modules[-1]).__name__ == "Normalize"
        self._modules = modules[:-1] if normalizes else modules

        max_tokens = model.max_seq_length
        if max_tokens is None:
            raise BackendError(f"the model at {model_dir} declares no maximum sequence length")
        dims: int | None
        if self.kind == "cross-encoder":
            dims = model.num_labels
        elif self.kind == "sparse":
            dims = model.tokenizer.vocab_size  # one entry per vocabulary token
        else:
            # Renamed in sentence-transformers 6; the old name warns there.
            dimension_of = getattr(model, "get_embedding_dimension", None)
            if dimension_of is None:
                dimension_of = model.get_sentence_embedding_dimension
            dims = dimension_of()
        if dims is None:
            raise BackendError(f"the model at {model_dir} declares no embedding dimension")

        hf_tokenizer = model.tokenizer
        pad_id = hf_tokenizer.pad_token_id
        text = TextEncoder(
            hf_tokenizer.backend_tokenizer.to_str(),
            max_tokens=int(max_tokens),
            pad_id=int(pad_id) if pad_id is not None else 0,
            pad_left=getattr(hf_tokenizer, "padding_side", "right") == "left",
        )
        super().__init__(text, dimensions=int(dims), normalizes=normalizes)

    @property
    def device(self) -> str:
        return self._device

    def compute_threads(self) -> int:
        return int(torch.get_num_threads())

    def embed(self, batch: Sequence[TokenizedInput]) -> npt.NDArray[np.float32]:
        refuse_on_event_loop("TorchBackend.embed")
        if not batch:
            return self.no_vectors()
        return self._run_modules(batch, "sentence_embedding")

    def score(self, batch: Sequence[TokenizedInput]) -> npt.NDArray[np.float32]:
        refuse_on_event_loop("TorchBackend.score")
        if not batch:
            return self.no_vectors()
        # The classification head's logits, before the activation predict() applies.
        return self._run_modules(batch, "scores")

    def embed_sparse(self, batch: Sequence[TokenizedInput]) -> list[SparseVector]:
        refuse_on_event_loop("TorchBackend.embed_sparse")
        if not batch:
            return []
        dense = self._run_modules(batch, "sentence_embedding")
        out = []
        for row in dense:
            (indices,) = np.nonzero(row)
            out.append(SparseVector(indices.astype(np.int32), row[indices]))
        return out

    def _run_modules(self, batch: Sequence[TokenizedInput], output: str) -> npt.NDArray[np.float32]:
        features: dict[str, Any] = {
            name: torch.from_numpy(array).to(self._device)
            for name, array in self.text.collate(batch).items()
        }
        with torch.inference_mode():
            for module in self._modules:
                features = module(features)
            rows = features[output]
        return np.ascontiguousarray(rows.float().cpu().numpy(), dtype=np.float32)

    def embed_tokens(self, batch: Sequence[TokenizedInput]) -> list[npt.NDArray[np.float32]]:
        refuse_on_event_loop("TorchBackend.embed_tokens")
        if not batch:
            return []
        arrays = self.text.collate(batch)
        features: dict[str, Any] = {
            name: torch.from_numpy(array).to(self._device) for name, array in arrays.items()
        }
        with torch.inference_mode():
            # The transformer alone: what pooling would read.
            tokens = self._modules[0](features)["token_embeddings"]
        values = tokens.float().cpu().numpy()
        mask = arrays["attention_mask"].astype(bool)
        return [np.ascontiguousarray(values[row][mask[row]]) for row in range(len(batch))]

    def __repr__(self) -> str:
        return (
            f"<TorchBackend device={self._device} dtype={self.dtype} dims={self._dimensions} "
            f"max_tokens={self.max_input_tokens} normalizes={self._normalizes}>"
        )


class PreloadedModel:
    """A sentence-transformers model loaded from disk, not yet owned by a thread.

    Loading runs no parallel region: torch's intra-op pool is kept at one thread
    while the weights are read, so a process that loads and then forks (gunicorn
    ``--preload``) hands its children no OpenMP state to trip on. Inference is
    read-only, so the backends of several replicas may share one of these.
    """

    def __init__(
        self, model: Any, device: str, dtype: str = "fp32", kind: ModelKind = "embedding"
    ) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.kind = kind

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        device: str | None = None,
        dtype: str = "fp32",
        model_kwargs: dict[str, Any] | None = None,
    ) -> PreloadedModel:
        from transformers.utils import logging as transformers_logging

        kind = model_kind(model_dir)
        model_class = _model_class(kind)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # A progress bar per model load is noise in a server's logs.
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        started = time.perf_counter()
        # One load at a time in a process: transformers builds a model on its meta
        # device and ties weights after, which two threads loading at once (the
        # replicas of one plan) can interleave, leaving a sparse encoder's tied
        # masked-LM head on the meta device ("Cannot copy out of meta tensor").
        try:
            with _LOADING:
                model = model_class(
                    str(model_dir), device=device, local_files_only=True, model_kwargs=model_kwargs
                )
            if dtype != "fp32":
                model.to(TORCH_DTYPES[dtype])
        except (OSError, ValueError) as exc:
            raise BackendError(f"could not load the model at {model_dir}: {exc}") from exc
        finally:
            torch.set_num_threads(threads)
        model.eval()
        logger.info(
            "loaded model from %s (%s, %s) in %.2f s",
            model_dir,
            kind,
            dtype,
            time.perf_counter() - started,
            extra={"model_dir": str(model_dir), "device": device},
        )
        return cls(model, device, dtype, kind)


def _model_class(kind: ModelKind) -> Any:
    """The sentence-transformers class that loads a model of ``kind``."""
    import sentence_transformers

    if kind == "embedding":
        return sentence_transformers.SentenceTransformer
    # Run module by module like an embedding model, which these classes allow
    # from sentence-transformers 6 on.
    major = int(sentence_transformers.__version__.split(".")[0])
    if major < 6:
        raise BackendError(
            f"serving a {kind} model needs sentence-transformers 6 or later "
            f"(this is {sentence_transformers.__version__}): pip install -U sentence-transformers"
        )
    if kind == "cross-encoder":
        return sentence_transformers.CrossEncoder
    return sentence_transformers.SparseEncoder


def cuda_device_count() -> int:
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _single_interop_thread() -> None:
    """Inference never forks inter-op work, so its pool needs one thread. torch allows
    setting it only before the pool starts; later calls raise, and the pool then
    keeps the size it already has."""
    if torch.get_num_interop_threads() == 1:
        return
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        logger.debug("torch's inter-op pool already started; left as it is")
