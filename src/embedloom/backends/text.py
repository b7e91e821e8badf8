"""Texts → token ids → padded arrays: the part every backend shares.

A backend built on torch and one built on ONNX Runtime must cut, pad and mask
inputs identically, or their vectors differ for reasons that have nothing to do
with arithmetic; this module is the one place that does it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from embedloom.backends.base import (
    PLAIN,
    ModelInput,
    SparseVector,
    TextPair,
    TokenizedInput,
    TokenizeOptions,
    TokenPiece,
)
from embedloom.errors import BackendError, InvalidInput

__all__ = ["EncoderBackend", "TextEncoder"]

Int64Array = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class _SpecialTokens:
    """What the tokenizer's post-processor puts around one sequence's content."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    prefix_types: tuple[int, ...]
    suffix_types: tuple[int, ...]
    content_type: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> _SpecialTokens:
        probe = tokenizer.encode("hello", add_special_tokens=False)
        full = tokenizer.post_process(probe)
        n = len(probe.ids)
        ids, types = list(full.ids), list(full.type_ids)
        start = next(i for i in range(len(ids) - n + 1) if ids[i : i + n] == probe.ids)
        return cls(
            prefix=tuple(ids[:start]),
            suffix=tuple(ids[start + n :]),
            prefix_types=tuple(types[:start]),
            suffix_types=tuple(types[start + n :]),
            content_type=types[start] if n else 0,
        )

    @property
    def count(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def around(self, content: Sequence[int], truncated: bool) -> TokenizedInput:
        return TokenizedInput(
            input_ids=(*self.prefix, *content, *self.suffix),
            token_type_ids=(
                *self.prefix_types,
                *((self.content_type,) * len(content)),
                *self.suffix_types,
            ),
            truncated=truncated,
        )


def _prompt_tokens(offsets: Sequence[tuple[int, int]], prompt_chars: int) -> int:
    """How many leading tokens start inside the prompt's characters."""
    count = 0
    for start, _ in offsets:
        if start >= prompt_chars:
            break
        count += 1
    return count


class TextEncoder:
    """A tokenizer configured once (padding and truncation off) and never changed:
    encoding through it from several threads is then safe (changing its settings
    while another thread encodes is what raises "Already borrowed").

    Cutting is done here, not by the tokenizer, because the tokenizer can only cut
    one end of the whole text: a prompt (``query: ``) must survive a cut from the
    left, and token ids given by the client are cut without re-encoding. The
    special tokens around the content (``[CLS] … [SEP]``) are read once from the
    tokenizer's own post-processor, so every model's template is honoured.
    """

    def __init__(
        self, tokenizer_json: str, *, max_tokens: int, pad_id: int, pad_left: bool = False
    ) -> None:
        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.max_tokens = max_tokens
        self.pad_id = pad_id
        self.pad_left = pad_left
        self.vocab_size = int(self._tokenizer.get_vocab_size(with_added_tokens=True))
        self._template = _SpecialTokens.of(self._tokenizer)
        if self._template.count >= max_tokens:
            raise ValueError(f"the model's maximum length {max_tokens} leaves no room for text")

    def to_json(self) -> str:
        """The tokenizer, serialised as ``tokenizer.json`` holds it."""
        return str(self._tokenizer.to_str())

    def tokenize(
        self, inputs: Sequence[ModelInput], options: TokenizeOptions = PLAIN
    ) -> list[TokenizedInput]:
        """Each input as the model takes it, cut to ``max_tokens``: a text with the
        options' prompt before it and the model's special tokens around it, or token
        ids as they are (the client's ids are the model's input, special tokens and
        all, as TEI and vLLM take them). ``InvalidInput`` names an id outside the
        vocabulary."""
        # One text at a time: ``encode_batch`` would spread the work over the
        # tokenizers library's own thread pool, threads outside the budget (and a
        # pool that must not exist when a server forks its workers).
        return [
            self._text(item, options) if isinstance(item, str) else self._ids(item, index, options)
            for index, item in enumerate(inputs)
        ]

    def _text(self, text: str, options: TokenizeOptions) -> TokenizedInput:
        encoding = self._tokenizer.encode(options.prompt + text, add_special_tokens=False)
        ids = encoding.ids
        room = self._limit(options) - self._template.count
        truncated = len(ids) > room
        if truncated:
            if options.left:
                # The prompt's tokens are those that start inside it; they stay.
                kept = _prompt_tokens(encoding.offsets, len(options.prompt))
                if kept >= room:
                    raise InvalidInput(
                        f"the prompt alone takes {kept} tokens, and the model takes "
                        f"{room} besides its special tokens",
                        param="prompt_name",
                    )
                ids = ids[:kept] + ids[len(ids) - (room - kept) :]
            else:
                ids = ids[:room]
        return self._template.around(ids, truncated)

    def _ids(self, ids: Sequence[int], index: int, options: TokenizeOptions) -> TokenizedInput:
        for position, token in enumerate(ids):
            if isinstance(token, bool) or not isinstance(token, int):
                raise InvalidInput(
                    f"input {index}: token {position} is not an integer", param="input"
                )
            if not 0 <= token < self.vocab_size:
                raise InvalidInput(
                    f"input {index}: token {position} is {token}, outside the model's "
                    f"vocabulary (0 to {self.vocab_size - 1})",
                    param="input",
                )
        if options.prompt:
            raise InvalidInput(
                "a prompt applies to text, not to token ids: prepend its ids yourself "
                "(POST /tokenize gives them)",
                param="prompt_name",
            )
        limit = self._limit(options)
        truncated = len(ids) > limit
        kept = tuple(ids)
        if truncated:
            kept = kept[-limit:] if options.left else kept[:limit]
        return TokenizedInput(input_ids=kept, token_type_ids=None, truncated=truncated)

    def tokenize_pairs(
        self, pairs: Sequence[TextPair], options: TokenizeOptions = PLAIN
    ) -> list[TokenizedInput]:
        """Each (query, document) pair as a cross-encoder reads it: ``[CLS] query
        [SEP] document [SEP]``, the document's tokens of the second type, cut to
        ``max_tokens`` by the tokenizer's own ``longest_first`` rule (what
        ``CrossEncoder`` asks of it), from the end or, with ``options.left``, the
        beginning. ``options.max_tokens`` first cuts each document to that many
        tokens (Cohere's ``max_tokens_per_doc``)."""
        cutter = self._pair_cutters[options.left]
        out = []
        for query, document in pairs:
            if options.max_tokens is not None:
                document = self._first_tokens(document, options.max_tokens)
            encoding = cutter.encode(query, document)
            out.append(
                TokenizedInput(
                    input_ids=tuple(encoding.ids),
                    token_type_ids=tuple(encoding.type_ids),
                    truncated=bool(encoding.overflowing),
                )
            )
        return out

    @cached_property
    def _pair_cutters(self) -> dict[bool, Tokenizer]:
        # Tokenizers of their own, configured once here and never changed after
        # (see the class's docstring), one per cutting direction.
        cutters = {}
        for left in (False, True):
            cutter = Tokenizer.from_str(self.to_json())
            cutter.no_padding()
            cutter.enable_truncation(
                self.max_tokens, strategy="longest_first", direction="left" if left else "right"
            )
            cutters[left] = cutter
        return cutters

    def _first_tokens(self, text: str, count: int) -> str:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        if len(encoding.ids) <= count:
            return text
        return text[: encoding.offsets[count - 1][1]]

    def _limit(self, options: TokenizeOptions) -> int:
        if options.max_tokens is None:
            return self.max_tokens
        if options.max_tokens <= self._template.count:
            raise InvalidInput(
                f"max_tokens must leave room for text besides the model's "
                f"{self._template.count} special tokens",
                param="max_tokens",
            )
        return min(options.max_tokens, self.max_tokens)

    def pieces(self, text: str, *, prompt: str = "", special: bool = True) -> list[TokenPiece]:
        """TEI's ``/tokenize``: each token of ``prompt + text`` with its place in it
        (special tokens have none), uncut."""
        whole = prompt + text
        encoding = self._tokenizer.encode(whole, add_special_tokens=special)
        out = []
        for token_id, (start, stop), is_special, token in zip(
            encoding.ids,
            encoding.offsets,
            encoding.special_tokens_mask,
            encoding.tokens,
            strict=True,
        ):
            if is_special:
                out.append(TokenPiece(token_id, token, True, None, None))
            else:
                out.append(TokenPiece(token_id, whole[start:stop], False, start, stop))
        return out

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """The text of token ids; ``InvalidInput`` names an id outside the vocabulary."""
        for position, token in enumerate(ids):
            if not 0 <= token < self.vocab_size:
                raise InvalidInput(
                    f"token {position} is {token}, outside the model's vocabulary "
                    f"(0 to {self.vocab_size - 1})",
                    param="ids",
                )
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=skip_special))

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

    kind = "embedding"

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

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    def tokenize(
        self, inputs: Sequence[ModelInput], options: TokenizeOptions = PLAIN
    ) -> list[TokenizedInput]:
        return self.text.tokenize(inputs, options)

    def tokenize_pairs(
        self, pairs: Sequence[TextPair], options: TokenizeOptions = PLAIN
    ) -> list[TokenizedInput]:
        return self.text.tokenize_pairs(pairs, options)

    def pieces(self, text: str, *, prompt: str = "", special: bool = True) -> list[TokenPiece]:
        return self.text.pieces(text, prompt=prompt, special=special)

    # The engine asks a backend only for the tasks it lists; these are the answer
    # to anything else that does.
    def score(self, batch: Sequence[TokenizedInput]) -> npt.NDArray[np.float32]:
        raise BackendError(f"{type(self).__name__} does not score pairs")

    def embed_sparse(self, batch: Sequence[TokenizedInput]) -> list[SparseVector]:
        raise BackendError(f"{type(self).__name__} does not make sparse vectors")

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        return self.text.decode(ids, skip_special=skip_special)

    def no_vectors(self) -> npt.NDArray[np.float32]:
        """The result of embedding an empty batch."""
        return np.zeros((0, self._dimensions), dtype=np.float32)
