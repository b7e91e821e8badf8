"""Texts → token ids → padded arrays: the part every backend shares.

A backend built on torch and one built on ONNX Runtime must cut, pad and mask
inputs identically, or their vectors differ for reasons that have nothing to do
with arithmetic; this module is the one place that does it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from embedloom.backends.base import TokenizedInput

__all__ = ["EncoderBackend", "TextEncoder"]

Int64Array = npt.NDArray[np.int64]


class TextEncoder:
    """A tokenizer configured once (truncation on, padding off) and never changed:
    encoding through it from several threads is then safe (changing its settings
    while another thread encodes is what raises "Already borrowed")."""

    def __init__(
        self, tokenizer_json: str, *, max_tokens: int, pad_id: int, pad_left: bool = False
    ) -> None:
        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_tokens)
        self.max_tokens = max_tokens
        self.pad_id = pad_id
        self.pad_left = pad_left

    def to_json(self) -> str:
        """The tokenizer, serialised as ``tokenizer.json`` holds it."""
        return str(self._tokenizer.to_str())

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedInput]:
        # One text at a time: ``encode_batch`` would spread the work over the
        # tokenizers library's own thread pool, threads outside the budget (and a
        # pool that must not exist when a server forks its workers).
        encodings = [self._tokenizer.encode(text, add_special_tokens=True) for text in texts]
        return [
            TokenizedInput(
                input_ids=tuple(e.ids),
                token_type_ids=tuple(e.type_ids),
                truncated=bool(e.overflowing),
            )
            for e in encodings
        ]

    def collate(self, batch: Sequence[TokenizedInput]) -> dict[str, Int64Array]:
        """``input_ids``, ``token_type_ids`` and ``attention_mask``, padded to the
        batch's longest input."""
        length = max(item.n_tokens for item in batch)
        input_ids = np.full((len(batch), length), self.pad_id, dtype=np.int64)
        type_ids = np.zeros((len(batch), length), dtype=np.int64)
        mask = np.zeros((len(batch), length), dtype=np.int64)
        for row, item in enumerate(batch):
            start = length - item.n_tokens if self.pad_left else 0
            span = slice(start, start + item.n_tokens)
            input_ids[row, span] = item.input_ids
            mask[row, span] = 1
            if item.token_type_ids is not None:
                type_ids[row, span] = item.token_type_ids
        return {"input_ids": input_ids, "token_type_ids": type_ids, "attention_mask": mask}


class EncoderBackend:
    """What every backend built on a ``TextEncoder`` shares: the text side of the
    ``Backend`` protocol and the shape of its output. Subclasses add ``embed``."""

    def __init__(self, text: TextEncoder, *, dimensions: int, normalizes: bool) -> None:
        self.text = text
        self._dimensions = dimensions
        self._normalizes = normalizes

    @property
    def max_input_tokens(self) -> int:
        return self.text.max_tokens

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def normalizes(self) -> bool:
        return self._normalizes

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedInput]:
        return self.text.tokenize(texts)

    def no_vectors(self) -> npt.NDArray[np.float32]:
        """The result of embedding an empty batch."""
        return np.zeros((0, self._dimensions), dtype=np.float32)
