"""Which variant of a model runs on this machine: the catalog of backend × dtype
(``catalog``), the accuracy gate a variant must pass to stand in for fp32
(``gate``), and the trial that picks the fastest that passes (``choice``).

``backends/`` knows *how* to run a model; this package decides *which* way,
and imports from ``backends/``, never the other way round.
"""

__all__: list[str] = []
