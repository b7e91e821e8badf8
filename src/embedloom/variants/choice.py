"""Which variant serves: ``--backend``/``--dtype`` narrowed down on this machine.

Every variant asked for is tried on the calibration set: one the machine cannot
run is refused with the reason, one that misses the accuracy gate is refused
with its figures, and among the rest (when ``auto`` left more than one) a timed
probe picks the fastest: every variant runs the same batches (calibration
sentences alone and joined in twos and fours, the lengths of real traffic) in
interleaved rounds, and one counts as faster than another only if it is faster by
more than ``MARGIN`` in every round. Variants the probe cannot tell apart are
ranked by accuracy (the closest to fp32 first), so the choice does not flip
between runs on noise. A variant that takes minutes to build (``SLOW_TO_BUILD``)
is a candidate of ``auto`` only once built (``embedloom variants --build``).

The trial's figures are a derived entry of the model in the store, keyed by the
machine, the thread count, the request and the slow variants built, so it runs
once per machine however many processes start at once.

The trial runs in a child process: it loads the reference, the variants and
their exports, and runs torch's and ONNX Runtime's thread pools, none of which a
server that is about to fork its workers may hold.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import statistics
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
    SLOW_TO_BUILD,
    VARIANTS,
    Variant,
    is_built,
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

__all__ = [
    "MARGIN",
    "Candidate",
    "Choice",
    "choose_variant",
    "forget_trial",
    "pick",
    "recorded_choice",
    "try_variants",
]

logger = logging.getLogger(__name__)

_RECORD = "candidates.json"
# Bumped when the trial's method changes, so records of the old one are not reused.
_TRIAL_FORMAT = 2
# Interleaved rounds of the timed probe (after an untimed warm-up pass): each round
# runs every variant once over the probe batches.
_PROBE_ROUNDS = 4
_PROBE_BATCH = 32
MARGIN = 0.03
"""How much faster, in every round, one variant must be to count as faster: this
machine's speed drifts by more than that between seconds, not within a round."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One variant's trial: refused (and why), or usable, with its figures."""

    variant: Variant
    refused: str | None = None
    gate: Gate | None = None
    sentences_per_second: float | None = None
    rounds: tuple[float, ...] = ()
    """The probe's speed in each round, sentences/s (their median is
    ``sentences_per_second``)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": str(self.variant),
            "refused": self.refused,
            "gate": self.gate.to_json() if self.gate else None,
            "sentences_per_second": self.sentences_per_second,
            "rounds": [round(r, 1) for r in self.rounds],
        }

    @property
    def accuracy(self) -> float:
        """Mean cosine (or Spearman) to the reference: 1 for the reference itself."""
        if self.gate is None:
            return 1.0
        return float(getattr(self.gate, "mean_cosine", getattr(self.gate, "spearman", 0.0)))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Candidate:
        gate = data.get("gate")
        return cls(
            Variant.parse(data["variant"]),
            data.get("refused"),
            gate_from_json(gate) if gate else None,
            data.get("sentences_per_second"),
            tuple(data.get("rounds") or ()),
        )


@dataclass(frozen=True, slots=True)
class Choice:
    """The variant that serves, its gate figures (None for the reference) and why."""

    variant: Variant
    gate: Gate | None
    reason: str
    candidates: tuple[Candidate, ...] = ()


def pick(candidates: Sequence[Candidate]) -> Choice:
    """The fastest candidate not refused, where the probe can tell; among those it
    cannot tell apart, the most accurate (then the catalog's order).
    ``BackendError`` listing every refusal when all were refused."""
    usable = [c for c in candidates if c.refused is None]
    if not usable:
        refusals = "; ".join(f"{c.variant}: {c.refused}" for c in candidates)
        raise BackendError(f"no variant can serve: {refusals}")
    unbeaten = [c for c in usable if not any(_clearly_faster(o, c) for o in usable)]
    best = min(unbeaten, key=_preference)
    if len(usable) == 1:
        reason = "the only variant allowed" if len(candidates) == 1 else "the only one usable"
    else:
        reason = "fastest of " + ", ".join(
            f"{c.variant} {c.sentences_per_second or 0:.0f}/s" for c in usable
        )
        ties = [str(c.variant) for c in unbeaten if c is not best]
        if ties:
            reason += (
                f"; {', '.join(ties)} not faster by more than {MARGIN:.0%} in every round: "
                "the closest to fp32 kept"
            )
    refused = [f"{c.variant} ({c.refused})" for c in candidates if c.refused]
    if refused:
        reason += "; refused: " + ", ".join(refused)
    return Choice(best.variant, best.gate, reason, tuple(candidates))


def _clearly_faster(a: Candidate, b: Candidate) -> bool:
    """Whether ``a`` was faster than ``b`` by more than ``MARGIN`` in every round."""
    a_rounds = a.rounds or (a.sentences_per_second or 0.0,)
    b_rounds = b.rounds or (b.sentences_per_second or 0.0,)
    if len(a_rounds) != len(b_rounds):
        a_rounds, b_rounds = (statistics.median(a_rounds),), (statistics.median(b_rounds),)
    return all(x > y * (1 + MARGIN) for x, y in zip(a_rounds, b_rounds, strict=True))


def _preference(candidate: Candidate) -> tuple[float, int]:
    order = VARIANTS.index(candidate.variant) if candidate.variant in VARIANTS else len(VARIANTS)
    return (-candidate.accuracy, order)


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
    ruled_out, unbuilt, name = _plan_trial(
        requested, model_dir, store, backend, dtype, threads, device
    )
    if len(ruled_out) == len(requested):
        pick(ruled_out)  # raises, naming each refusal

    def trial(into: Path) -> None:
        logger.info(
            "trying %s on this machine (once; the result is kept in %s)",
            ", ".join(str(v) for v in requested),
            store.home,
        )
        _run_trial_process(
            model_dir, store, backend, dtype, threads, device, into / _RECORD, skip=unbuilt
        )

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


def recorded_choice(
    model_dir: Path,
    store: ModelStore,
    *,
    backend: str = "auto",
    dtype: str = "auto",
    threads: int,
    device: str,
) -> Choice | None:
    """The choice the last trial on this machine made for these flags, or None
    when none is recorded (the next start runs one); never runs a trial."""
    requested = requested_variants(backend, dtype)
    if len(requested) == 1:
        return None
    _, _, name = _plan_trial(requested, model_dir, store, backend, dtype, threads, device)
    if not store.has_derived(model_dir, name):
        return None

    def missing(into: Path) -> None:
        raise BackendError(f"the trial record {name} went away while it was read")

    record = store.derived(model_dir, name, missing) / _RECORD
    return pick([Candidate.from_json(c) for c in json.loads(record.read_text())])


def _plan_trial(
    requested: list[Variant],
    model_dir: Path,
    store: ModelStore,
    backend: str,
    dtype: str,
    threads: int,
    device: str,
) -> tuple[list[Candidate], list[Variant], str]:
    """What a trial of ``requested`` would be: the variants this machine or the
    model's kind rules out (refused), the slow ones it skips, and its record's name."""
    kind = model_kind(model_dir)
    ruled_out = [
        Candidate(v, refused=reason)
        for v in requested
        if (reason := unsupported_reason(v, device, kind=kind)) is not None
    ]
    unbuilt = _unbuilt(requested, ruled_out, model_dir, store)
    return ruled_out, unbuilt, _trial_name(requested, unbuilt, backend, dtype, threads, device)


def _unbuilt(
    requested: list[Variant], ruled_out: list[Candidate], model_dir: Path, store: ModelStore
) -> list[Variant]:
    """The slow-to-build variants a trial skips: a slow build runs at start-up only
    when it is the one variant asked for."""
    refused = {c.variant for c in ruled_out}
    return [
        v
        for v in requested
        if v in SLOW_TO_BUILD
        and v not in refused
        and len(requested) > 1
        and not is_built(v, model_dir, store)
    ]


def _trial_name(
    requested: list[Variant],
    unbuilt: list[Variant],
    backend: str,
    dtype: str,
    threads: int,
    device: str,
) -> str:
    # Building a slow variant makes a new trial (with it) at the next start.
    built = "".join(
        f"-{v.backend}{v.dtype}" for v in requested if v in SLOW_TO_BUILD and v not in unbuilt
    )
    return f"choice-v{_TRIAL_FORMAT}-{machine_key(device)}-{backend}-{dtype}-t{threads}{built}"


def forget_trial(model_dir: Path, store: ModelStore, *, device: str) -> int:
    """Remove this machine's trial records of the model, so the next start tries the
    variants again (after a hardware or library change); how many were removed."""
    return store.remove_derived(model_dir, f"choice-v{_TRIAL_FORMAT}-{machine_key(device)}-")


def try_variants(
    variants: Sequence[Variant],
    open_factory: Callable[[Variant], BackendFactory],
    *,
    device: str,
    texts: Sequence[str] | None = None,
    rounds: int = _PROBE_ROUNDS,
    clock: Callable[[], float] = time.perf_counter,
    skip: Sequence[Variant] = (),
) -> list[Candidate]:
    """Run each variant on the calibration set against the fp32 reference; time the
    ones that pass, in ``rounds`` interleaved rounds on ``clock``, when there is more
    than one to choose from. Variants in ``skip`` are refused as not built yet."""
    texts = list(texts or calibration_texts())
    reference_backend = open_factory(REFERENCE)()
    kind = reference_backend.kind
    reference = gate_outputs(reference_backend, texts)
    del reference_backend
    gc.collect()
    tried: list[tuple[Candidate, Any]] = []
    for variant in variants:
        if variant in skip:
            tried.append((Candidate(variant, refused=_NOT_BUILT), None))
            continue
        tried.append(_try(variant, open_factory, device, kind, texts, reference))
    timed = [(c, b) for c, b in tried if b is not None]
    by_variant: dict[Variant, list[float]] = {}
    if len(timed) > 1:
        speeds = _probe([b for _, b in timed], probe_texts(texts), rounds, clock)
        by_variant = {c.variant: s for (c, _), s in zip(timed, speeds, strict=True)}
    candidates = []
    for candidate, _ in tried:
        if candidate.variant in by_variant:
            per_round = by_variant[candidate.variant]
            candidate = dataclasses.replace(
                candidate,
                sentences_per_second=round(statistics.median(per_round), 1),
                rounds=tuple(per_round),
            )
        candidates.append(candidate)
        logger.info("tried %s", candidate.to_json())
    return candidates


_NOT_BUILT = (
    "not built yet: building it takes minutes; `embedloom variants --build` builds it, "
    "and the next start tries it"
)


def _try(
    variant: Variant,
    open_factory: Callable[[Variant], BackendFactory],
    device: str,
    kind: str,
    texts: list[str],
    reference: Any,
) -> tuple[Candidate, Any]:
    """The variant's gate figures, and its backend (kept for the probe) if it passed."""
    if (reason := unsupported_reason(variant, device, kind=kind)) is not None:
        return Candidate(variant, refused=reason), None
    try:
        backend = open_factory(variant)()
        vectors = gate_outputs(backend, texts)  # also the probe's warm-up
    except Exception as exc:  # an export or runtime that fails here must not stop the rest
        logger.warning("variant %s failed to run", variant, exc_info=True)
        return Candidate(variant, refused=f"failed to run: {type(exc).__name__}: {exc}"), None
    gate = (
        None
        if variant == REFERENCE
        else measure_outputs(backend, reference, vectors, texts=len(texts))
    )
    if gate is not None and not gate.passed:
        shortfalls = "; ".join(gate.shortfalls())
        refused = Candidate(variant, refused=f"failed the accuracy gate: {shortfalls}", gate=gate)
        return refused, None
    return Candidate(variant, gate=gate), backend


def probe_texts(texts: Sequence[str]) -> list[str]:
    """Inputs shaped like traffic from the calibration sentences (about 12 tokens
    each): a batch of them alone, one joined in twos, one in fours."""
    each = min(_PROBE_BATCH, len(texts) // 4)
    singles = list(texts[:each])
    pairs = [" ".join(texts[i : i + 2]) for i in range(0, 2 * each, 2)]
    fours = [" ".join(texts[i : i + 4]) for i in range(0, 4 * each, 4)]
    return singles + pairs + fours


def _probe(
    backends: Sequence[Any], texts: list[str], rounds: int, clock: Callable[[], float]
) -> list[list[float]]:
    """Each backend's sentences/s in each round; the order within a round alternates,
    so neither a slow start nor a slow end of the machine's minute falls on one."""
    speeds: list[list[float]] = [[] for _ in backends]
    for number in range(rounds):
        order = list(range(len(backends)))
        if number % 2:
            order.reverse()
        for index in order:
            started = clock()
            done = len(gate_outputs(backends[index], texts))
            speeds[index].append(done / max(clock() - started, 1e-9))
    return speeds


def _run_trial_process(
    model_dir: Path,
    store: ModelStore,
    backend: str,
    dtype: str,
    threads: int,
    device: str,
    record: Path,
    *,
    skip: Sequence[Variant] = (),
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
        *(f"--skip={v}" for v in skip),
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
    parser.add_argument("--skip", action="append", default=[], type=Variant.parse)
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
    candidates = try_variants(variants, opener, device=args.device, skip=args.skip)
    Path(args.record).write_text(json.dumps([c.to_json() for c in candidates], indent=1))


if __name__ == "__main__":
    _trial_main()
