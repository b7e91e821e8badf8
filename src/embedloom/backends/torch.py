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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from embedloom.backends.base import Task, TokenizedInput
from embedloom.backends.text import EncoderBackend, TextEncoder
from embedloom.errors import BackendError
from embedloom.offload import refuse_on_event_loop

__all__ = ["TORCH_DTYPES", "TorchBackend", "cuda_device_count"]

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBackend(EncoderBackend):
    """Holds one loaded model; ``embed`` runs on the owning thread only."""

    name = "torch"
    tasks: tuple[Task, ...] = ("embed", "tokens")

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
        features: dict[str, Any] = {
            name: torch.from_numpy(array).to(self._device)
            for name, array in self.text.collate(batch).items()
        }
        with torch.inference_mode():
            for module in self._modules:
                features = module(features)
            pooled = features["sentence_embedding"]
        return np.ascontiguousarray(pooled.float().cpu().numpy(), dtype=np.float32)

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

    def __init__(self, model: Any, device: str, dtype: str = "fp32") -> None:
        self.model = model
        self.device = device
        self.dtype = dtype

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        device: str | None = None,
        dtype: str = "fp32",
        model_kwargs: dict[str, Any] | None = None,
    ) -> PreloadedModel:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # A progress bar per model load is noise in a server's logs.
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        started = time.perf_counter()
        try:
            model = SentenceTransformer(
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
            "loaded model from %s (%s) in %.2f s",
            model_dir,
            dtype,
            time.perf_counter() - started,
            extra={"model_dir": str(model_dir), "device": device},
        )
        return cls(model, device, dtype)


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
