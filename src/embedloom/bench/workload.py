"""What ``bench`` sends: texts (a file's, or generated English-like sentences) and a
mix of request sizes."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from embedloom.errors import InvalidInput

__all__ = [
    "DEFAULT_MEAN_WORDS",
    "ONE_INPUT",
    "RequestMix",
    "Workload",
    "generated_sentences",
    "texts_from_file",
    "workload_texts",
]

_WORDS = (
    "the a of and to in is was for on with as by at from that this it be are have has had not "
    "but or an which one all their there been were when who will more no if out so what up "
    "about into than them can only other new some could time these two may then do first any "
    "my now such like our over man me even most made after also did many before must through "
    "back years where much your way well down should because each just those people how too "
    "little state good very make world still own see men work long get here between both life "
    "being under never day same another know while last might us great old year off come "
    "since against go came right used take three embedding server model request batch thread "
    "process memory latency throughput network cluster query search vector index engine "
    "runtime worker queue token sentence language machine learning information development "
    "international important different following national available business research "
    "understanding performance environment experience management community university"
).split()


# Generated texts' words: lognormal, skewed short like real queries and titles,
# with a long tail; by default a mean of about 27 words (about 30 tokens).
_WORDS_SIGMA = 0.45
DEFAULT_MEAN_WORDS = math.exp(3.2 + _WORDS_SIGMA**2 / 2)


def generated_sentences(
    count: int, *, mean_words: float = DEFAULT_MEAN_WORDS, seed: int = 7
) -> list[str]:
    """Deterministic English-like sentences with ``mean_words`` words on average (by
    default 5–60 words, 8–70 tokens, mean about 30 tokens)."""
    rng = random.Random(seed)
    mu = math.log(mean_words) - _WORDS_SIGMA**2 / 2
    fewest = max(1, min(5, int(mean_words / 2)))
    most = max(60, round(mean_words * 2.2))
    out = []
    for _ in range(count):
        words = min(most, max(fewest, int(rng.lognormvariate(mu, _WORDS_SIGMA))))
        text = " ".join(rng.choice(_WORDS) for _ in range(words))
        out.append(text[0].upper() + text[1:] + ".")
    return out


def workload_texts(path: str | None, *, field: str = "text", mean_words: float | None) -> list[str]:
    """The texts to send: ``path``'s, or generated ones (``mean_words`` shapes those
    only)."""
    if path is None:
        return generated_sentences(4096, mean_words=mean_words or DEFAULT_MEAN_WORDS)
    if mean_words is not None:
        raise InvalidInput(
            "--words shapes generated texts; with --texts yours are sent as they are"
        )
    return texts_from_file(path, field=field)


def texts_from_file(path: str, *, field: str = "text", limit: int = 100_000) -> list[str]:
    """Up to ``limit`` texts of a .txt, .jsonl, .csv or .parquet file (the batch job's
    readers; ``field``: the JSON field or column); rows it cannot read are skipped."""
    from embedloom.batch.readers import Record, read_records

    texts = []
    for item in read_records(path, field=field):
        if isinstance(item, Record):
            texts.append(item.text)
            if len(texts) >= limit:
                break
    if not texts:
        raise InvalidInput(f"{path} has no text to send (field or column {field!r})")
    return texts


@dataclass(frozen=True, slots=True)
class RequestMix:
    """How many inputs each request carries: sizes with their weights."""

    sizes: tuple[int, ...]
    weights: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> RequestMix:
        """``8`` (every request 8 inputs) or ``1:70,8:20,64:10`` (sizes with weights)."""
        sizes, weights = [], []
        for part in text.split(","):
            size, _, weight = part.strip().partition(":")
            try:
                sizes.append(int(size))
                weights.append(int(weight) if weight else 1)
            except ValueError:
                raise InvalidInput(
                    f"--inputs-per-request {text!r}: write a size (8) or sizes with weights "
                    "(1:70,8:20,64:10)"
                ) from None
        if min(sizes) < 1 or min(weights) < 1:
            raise InvalidInput(f"--inputs-per-request {text!r}: sizes and weights must be ≥ 1")
        return cls(tuple(sizes), tuple(weights))

    def __str__(self) -> str:
        if len(self.sizes) == 1:
            return str(self.sizes[0])
        return ",".join(f"{s}:{w}" for s, w in zip(self.sizes, self.weights, strict=True))


ONE_INPUT = RequestMix((1,), (1,))


class Workload:
    """The requests to send, as a deterministic stream: each one's texts, taken in
    turn from ``texts``, and its size drawn from ``mix``."""

    def __init__(self, texts: list[str], mix: RequestMix, *, seed: int = 11) -> None:
        self._texts = texts
        self._mix = mix
        self._seed = seed

    def requests(self, start: int = 0) -> Iterator[list[str]]:
        """An endless stream of requests; ``start`` offsets it (one per client)."""
        rng = random.Random(self._seed + start)
        cursor = start * 997
        while True:
            (size,) = rng.choices(self._mix.sizes, weights=self._mix.weights)
            yield [self._texts[(cursor + i) % len(self._texts)] for i in range(size)]
            cursor += size
