"""The benchmarks' texts: ``embedloom bench``'s generated sentences (8–70 tokens, mean
about 30), one generator for the command and the scripts."""

from __future__ import annotations

from embedloom.bench.workload import generated_sentences as sentences

__all__ = ["sentences"]
