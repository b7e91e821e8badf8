"""``Engine.statistics()``: one frozen snapshot of the engine's counters and
histograms, which ``/metrics``, the status of a server and the tests read."""

from __future__ import annotations

from dataclasses import dataclass

from embedloom.sharing import WorkerStatistics
from embedloom.stats import HistogramSnapshot

__all__ = ["EngineStatistics", "TenantStatistics"]


@dataclass(frozen=True, slots=True)
class TenantStatistics:
    """One tenant's counts (a key's name, or the tenant header's value)."""

    requests_admitted: int
    requests_rejected: int  # refused by admission (429)
    inputs_embedded: int


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    state: str
    queued_inputs: int
    admitted_inputs: int
    max_queued_inputs: int
    running_batches: int
    requests_admitted: int
    requests_completed: int
    requests_failed: int
    requests_rejected: int
    requests_cancelled: int
    requests_expired: int
    batches_split: int
    inference_restarts: int
    inputs_embedded: int
    inputs_dropped: int
    batches_run: int
    batches_shared: int  # of batches_run, those holding inputs of several requests
    input_tokens: int
    padded_tokens: int
    batch_size: HistogramSnapshot
    batch_tokens: HistogramSnapshot
    input_length: HistogramSnapshot
    queue_seconds: HistogramSnapshot
    inference_seconds: HistogramSnapshot
    worker: WorkerStatistics
    # By tenant name, the first 64 seen; later ones together as "other".
    tenants: dict[str, TenantStatistics]
