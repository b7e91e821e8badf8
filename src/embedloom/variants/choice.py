"""Which variant serves: ``--backend``/``--dtype`` narrowed down on this machine.

Every variant asked for is tried on the calibration set: one the machine cannot
run is refused with the reason, one that misses the accuracy gate is refused
with its figures, and among the rest (when ``auto`` left more than one) a short
timed probe picks the fastest. The trial's figures are a derived entry of the
model in the store, keyed by the machine, the thread count and the request, so
it runs once per machine however many processes start at once.

The trial runs in a child process: it loads the reference, the variants and
their exports, and runs torch's and ONNX Runtime's thread pools, none of which a
server that is about to fork its workers may hold.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedloom.backends.base import BackendFactory
from embedloom.errors import BackendError
from embedloom.log import configure_logging, current_format
from embedloom.store import ModelStore
from embedloom.tasks import model_kind
from embedloom.variants.catalog import (
    REFERENCE,
    Variant,
    machine_key,
    open_variant,
    requested_variants,
    unsupported_reason,
)
from embedloom.variants.gate import (
    Gate,
    calibration_texts,
    gate_from_json,
    gate_outputs,
    measure_outputs,
)

__all__ = ["Candidate", "Choice", "choose_variant", "pick", "try_variants"]

logger = logging.getLogger(__name__)

_RECORD = "candidates.json"
# How long the timed probe runs each variant (after an untimed warm-up pass):
# long enough that a 2-core machine's noise does not decide, short at startup.
_PROBE_SECONDS = 1.5


@dataclass(frozen=True, slots=True)
class Candidate:
    """One variant's trial: refused (and why), or usable, with its figures."""

    variant: Variant
    refused: str | None = None
    gate: Gate | None = None
    sentences_per_second: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": str(self.variant),
            "refused": self.refused,
            "gate": self.gate.to_json() if self.gate else None,
            "sentences_per_second": self.sentences_per_second,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Candidate:
        gate = data.get("gate")
        return cls(
            Variant.parse(data["variant"]),
            data.get("refused"),
            gate_from_json(gate) if gate else None,
            data.get("sentences_per_second"),
        )


@dataclass(frozen=True, slots=True)
class Choice:
    """The variant that serves, its gate figures (None for the reference) and why."""

    variant: Variant
    gate: Gate | None
    reason: str
    candidates: tuple[Candidate, ...] = ()


def pick(candidates: Sequence[Candidate]) -> Choice:
    """The fastest candidate not refused; ``BackendError`` listing every refusal
    when all were."""
    usable = [c for c in candidates if c.refused is None]
    if not usable:
        refusals = "; ".join(f"{c.variant}: {c.refused}" for c in candidates)
        raise BackendError(f"no variant can serve: {refusals}")
    best = max(usable, key=lambda c: c.sentences_per_second or 0.0)
    if len(usable) == 1:
        reason = "the only variant allowed" if len(candidates) == 1 else "the only one usable"
    else:
        reason = "fastest of " + ", ".join(
            f"{c.variant} {c.sentences_per_second or 0:.0f}/s" for c in usable
        )
    refused = [f"{c.variant} ({c.refused})" for c in candidates if c.refused]
    if refused:
        reason += "; refused: " + ", ".join(refused)
    return Choice(best.variant, best.gate, reason, tuple(candidates))


def choose_variant(
    model_dir: Path,
    store: ModelStore,
    *,
    backend: str = "auto",
    dtype: str = "auto",
    threads: int,
    device: str,
) -> Choice:
    """Choose, trying the requested variants on this machine unless a trial's
    record is already in the store."""
    requested = requested_variants(backend, dtype)
    if requested == [REFERENCE]:
        return Choice(REFERENCE, None, "the fp32 reference, as asked")
    # What the model's kind rules out is known without a trial (seconds of start-up).
    kind = model_kind(model_dir)
    ruled_out = [
        Candidate(v, refused=reason)
        for v in requested
        if (reason := unsupported_reason(v, device, kind=kind)) is not None
    ]
    if len(ruled_out) == len(requested):
        pick(ruled_out)  # raises, naming each refusal
    name = f"choice-{machine_key(device)}-{backend}-{dtype}-t{threads}"

    def trial(into: Path) -> None:
        logger.info(
            "trying %s on this machine (once; the result is kept in %s)",
            ", ".join(str(v) for v in requested),
            store.home,
        )
        _run_trial_process(model_dir, store, backend, dtype, threads, device, into / _RECORD)

    try:
        record = store.derived(model_dir, name, trial) / _RECORD
    except (BackendError, OSError) as exc:
        if REFERENCE not in requested:
            raise
        # Speed is an optimisation: when the trial cannot run (it crashed, or the
        # store is read-only) the reference still serves, and the next start tries
        # again, since nothing was recorded.
        logger.warning("could not try the variants (%s); serving the fp32 reference", exc)
        return Choice(REFERENCE, None, f"the fp32 reference: the trial failed ({exc})")
    candidates = [Candidate.from_json(c) for c in json.loads(record.read_text())]
    return pick(candidates)


def try_variants(
    variants: Sequence[Variant],
    open_factory: Callable[[Variant], BackendFactory],
    *,
    device: str,
    texts: Sequence[str] | None = None,
    probe_seconds: float = _PROBE_SECONDS,
) -> list[Candidate]:
    """Run each variant on the calibration set against the fp32 reference; time the
    ones that pass when there is more than one to choose from."""
    texts = list(texts or calibration_texts())
    reference_backend = open_factory(REFERENCE)()
    kind = reference_backend.kind
    reference = gate_outputs(reference_backend, texts)
    del reference_backend
    gc.collect()
    probe = len(variants) > 1
    candidates = []
    for variant in variants:
        candidate = _try(
            variant, open_factory, device, kind, texts, reference, probe, probe_seconds
        )
        candidates.append(candidate)
        gc.collect()  # one variant's model in memory at a time
        logger.info("tried %s", candidate.to_json())
    return candidates


def _try(
    variant: Variant,
    open_factory: Callable[[Variant], BackendFactory],
    device: str,
    kind: str,
    texts: list[str],
    reference: Any,
    probe: bool,
    probe_seconds: float,
) -> Candidate:
    if (reason := unsupported_reason(variant, device, kind=kind)) is not None:
        return Candidate(variant, refused=reason)
    try:
        backend = open_factory(variant)()
        vectors = gate_outputs(backend, texts)  # also the probe's warm-up
    except Exception as exc:  # an export or runtime that fails here must not stop the rest
        logger.warning("variant %s failed to run", variant, exc_info=True)
        return Candidate(variant, refused=f"failed to run: {type(exc).__name__}: {exc}")
    gate = (
        None
        if variant == REFERENCE
        else measure_outputs(backend, reference, vectors, texts=len(texts))
    )
    if gate is not None and not gate.passed:
        shortfalls = "; ".join(gate.shortfalls())
        return Candidate(variant, refused=f"failed the accuracy gate: {shortfalls}", gate=gate)
    speed = _probe(backend, texts, probe_seconds) if probe else None
    return Candidate(variant, gate=gate, sentences_per_second=speed)


def _probe(backend: Any, texts: list[str], seconds: float) -> float:
    done = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or done == 0:
        done += len(gate_outputs(backend, texts))
    return done / elapsed


def _run_trial_process(
    model_dir: Path,
    store: ModelStore,
    backend: str,
    dtype: str,
    threads: int,
    device: str,
    record: Path,
) -> None:
    command = [
        sys.executable,
        "-m",
        __name__,
        "--model-dir",
        str(model_dir),
        "--home",
        str(store.home),
        "--backend",
        backend,
        "--dtype",
        dtype,
        "--threads",
        str(threads),
        "--device",
        device,
        "--record",
        str(record),
        # The child's lines join ours on stderr: in the same format (JSON for
        # log shippers and for tests that read the server's log).
        "--log-format",
        current_format(),
    ]
    finished = subprocess.run(command, check=False)
    if finished.returncode != 0 or not record.is_file():
        raise BackendError(
            f"trying the {backend}/{dtype} variants failed (exit {finished.returncode}); "
            "its log is above"
        )


def _trial_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="embedloom's variant trial (internal)")
    for flag in ("--model-dir", "--home", "--backend", "--dtype", "--device", "--record"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    # Our own progress at INFO; the quantiser's per-tensor chatter (on the root
    # logger) only when something goes wrong.
    configure_logging("warning", args.log_format)
    logging.getLogger("embedloom").setLevel(logging.INFO)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model_dir, store = Path(args.model_dir), ModelStore(Path(args.home), offline=True)

    def opener(variant: Variant) -> BackendFactory:
        return open_variant(variant, model_dir, store, threads=args.threads, device=args.device)

    variants = requested_variants(args.backend, args.dtype)
    candidates = try_variants(variants, opener, device=args.device)
    Path(args.record).write_text(json.dumps([c.to_json() for c in candidates], indent=1))


if __name__ == "__main__":
    _trial_main()
