"""``embedloom tune``: try the settings that matter on this machine with the user's
texts, within a time budget, and write the best as a config file for
``serve --config``.

Each trial is a real server under ``bench``'s load (``measure.ServerTrial``);
the search and its noise rule are in ``search``. The table printed lists every
trial, with the noise measured between the two runs of the defaults.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from embedloom.bench.load import LoadPlan
from embedloom.bench.workload import RequestMix, Workload, workload_texts
from embedloom.config import Settings
from embedloom.errors import InvalidInput
from embedloom.tune.flags import TuneOptions
from embedloom.tune.knobs import config_text, machine_knobs, variant_options
from embedloom.tune.measure import ServerTrial, TrialFailed
from embedloom.tune.search import Goal, Measurement, Outcome, search

__all__ = ["report", "run_tune"]

# Under --target latency with no --rate: this share of the defaults' capacity.
_LATENCY_LOAD = 0.6


def run_tune(settings: Settings, options: TuneOptions) -> str:
    """Search, write ``options.output``, and return the report."""
    if len(settings.models) > 1:
        raise InvalidInput("tune fits one model at a time: give a single --model")
    if options.output.exists() and not options.overwrite:
        raise InvalidInput(f"{options.output} exists: pass --overwrite to replace it")
    if not options.output.parent.is_dir():
        raise InvalidInput(f"{options.output}: no directory {options.output.parent}")
    started = time.monotonic()
    texts = workload_texts(options.texts, field=options.text_field, mean_words=options.words)
    workload = Workload(texts, options.mix)
    # The search starts from embedloom's defaults for this model: only the model, the
    # store, and a backend or dtype the caller pinned are the caller's (pinned, they
    # are in every trial and in the file; the variant knob tries only what they allow).
    spec = settings.models[0]
    pinned = {name: getattr(settings, name) for name in ("backend", "dtype")}
    pinned = {name: value for name, value in pinned.items() if value != "auto"}
    settings = Settings(
        model=(f"{spec.name}={spec.ref}",),
        home=settings.home,
        offline=settings.offline,
        **pinned,
    )
    cores, choice = _machine(settings)
    closed = LoadPlan("closed", options.concurrency, options.duration, None, options.warmup)
    plan, load_text = closed, f"{options.concurrency} closed-loop clients"
    if options.target == "latency":
        rate = options.rate or _LATENCY_LOAD * _capacity(
            settings, workload, closed, options.mix, pinned
        )
        plan = LoadPlan("open", rate, options.duration, None, options.warmup)
        load_text = f"{rate:.1f} requests/s offered (open loop)"
    knobs = machine_knobs(
        settings, cores=cores, variants=variant_options(choice), target=options.target
    )
    goal = Goal(options.target, options.max_p99_ms)
    measure = _Announced(ServerTrial(settings, workload, plan, pinned), options.progress)
    spent = time.monotonic() - started
    outcome = search(knobs, measure, goal, budget_seconds=max(0.0, options.budget_seconds - spent))
    header = [
        f"written by embedloom tune, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: target "
        f"{options.target}, {load_text}, inputs per request {options.mix}",
        *(f"kept: {knob} = {option}" for knob, option in outcome.kept),
    ]
    if not outcome.kept:
        header.append(f"no setting beat the defaults by more than the noise ({outcome.noise:.1%})")
    options.output.write_text(config_text(settings, pinned | outcome.settings, header=header))
    return report(outcome, goal, load_text, options.output)


def _machine(settings: Settings) -> tuple[int, Any]:
    """This machine's cores, and the variant trial of the model (run once, kept)."""
    from embedloom.sharing import plan_sharing
    from embedloom.store import ModelStore, resolve_model
    from embedloom.threads import usable_cores
    from embedloom.variants.choice import choose_variant

    cores = usable_cores().usable
    store = ModelStore.for_settings(settings)
    model_dir = resolve_model(settings.model_ref, store=store).path
    threads = plan_sharing(settings, cores=cores, gpus=0).threads_per_replica
    choice = choose_variant(
        model_dir,
        store,
        backend=settings.backend,
        dtype=settings.dtype,
        threads=threads,
        device="cpu",
    )
    return cores, choice


def _capacity(
    settings: Settings,
    workload: Workload,
    plan: LoadPlan,
    mix: RequestMix,
    pinned: Mapping[str, Any],
) -> float:
    """Requests/s the defaults sustain in a closed loop."""
    measured = ServerTrial(settings, workload, plan, pinned)({})
    if measured.failed is not None:
        raise TrialFailed(f"the defaults could not be measured: {measured.failed}")
    mean_size = sum(s * w for s, w in zip(mix.sizes, mix.weights, strict=True)) / sum(mix.weights)
    return max(0.1, measured.sentences_per_s / mean_size)


class _Announced:
    """A measure that says, on stderr, what it ran and what it got."""

    def __init__(self, measure: ServerTrial, progress: bool) -> None:
        self._measure = measure
        self._progress = progress
        self._count = 0

    def __call__(self, candidate: Mapping[str, Any]) -> Measurement:
        self._count += 1
        what = ", ".join(f"{k}={v}" for k, v in sorted(candidate.items())) or "defaults"
        if self._progress:
            print(f"trial {self._count}: {what} …", end="", file=sys.stderr, flush=True)
        measured = self._measure(candidate)
        if self._progress:
            print(f" {_figures(measured)}", file=sys.stderr, flush=True)
        if measured.failed is not None and not candidate:
            raise TrialFailed(f"the defaults could not be measured: {measured.failed}")
        return measured


def _figures(measured: Measurement) -> str:
    if measured.failed is not None:
        return measured.failed
    p99 = f"{measured.p99_ms:,.0f} ms" if measured.p99_ms is not None else "-"
    return (
        f"{measured.sentences_per_s:,.1f} sentences/s, p99 {p99}, refused "
        f"{measured.refused_rate:.1%}, errors {measured.error_rate:.1%}"
    )


def report(outcome: Outcome, goal: Goal, load_text: str, output: Path) -> str:
    """What was tried, with the noise, what was kept, and where it was written."""
    better = "sentences/s" if goal.target == "throughput" else "p99"
    lines = [
        f"tune: target {goal.target} ({better}) under {load_text}; the noise between the two "
        f"runs of the defaults: {outcome.noise:.1%} (a change must beat it)",
        "",
        "| # | setting | value | sentences/s | p99 ms | refused | errors | vs best so far "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for number, tried in enumerate(outcome.tried, 1):
        m = tried.measured
        shown = tried.gain is not None and not math.isinf(tried.gain) and not goal.problem(m)
        gain = f"{tried.gain:+.1%}" if shown else ""
        p99 = f"{m.p99_ms:,.0f}" if m.p99_ms is not None else "-"
        lines.append(
            f"| {number} | {tried.knob} | {tried.option} | {m.sentences_per_s:,.1f} | {p99} | "
            f"{m.refused_rate:.1%} | {m.error_rate:.1%} | {gain} | {tried.verdict} |"
        )
    lines.append("")
    if outcome.kept:
        lines.append("kept: " + ", ".join(f"{knob} = {option}" for knob, option in outcome.kept))
    else:
        lines.append(
            f"nothing beat the defaults by more than the noise ({outcome.noise:.1%}): the file "
            "keeps the defaults"
        )
    if outcome.not_tried:
        lines.append("not tried (the budget ran out): " + ", ".join(outcome.not_tried))
    lines.append(f"wrote {output}: embedloom serve --config {output}")
    return "\n".join(lines)
