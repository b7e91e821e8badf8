"""The benchmark's texts: deterministic English-like sentences of 8–70 tokens (mean 30)."""

from __future__ import annotations

import random

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


def sentences(count: int, *, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        # Word counts skewed short, like real queries and titles, with a long tail.
        words = min(60, max(5, int(rng.lognormvariate(3.2, 0.45))))
        text = " ".join(rng.choice(_WORDS) for _ in range(words))
        out.append(text[0].upper() + text[1:] + ".")
    return out
