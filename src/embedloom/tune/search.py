"""``tune``'s search: one setting at a time from the defaults, within a time budget,
keeping a change only when it beats the best so far by more than the noise.

Pure: the measuring is a callable (a real server under load in ``tune``, a table
of figures in the tests), the clock another.

The noise is measured, not assumed: the defaults run twice first, and the
relative difference between the two runs (at least ``NOISE_FLOOR``) is the
margin any change must clear. A change that clears it is confirmed against
the incumbent measured again right after (the machine drifts: a faster figure
from an earlier, quieter minute is no evidence), and only then kept. A full
grid is out of reach (each trial starts a server and loads it for seconds), so
the search is coordinate-wise, in the order the settings matter most; options
the budget leaves no time for are listed as not tried.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "NOISE_FLOOR",
    "Goal",
    "Knob",
    "Measurement",
    "Option",
    "Outcome",
    "Tried",
    "search",
]

# Below this, a difference between two runs is not worth a setting: two runs of
# one configuration on a quiet machine still differ by a percent or two.
NOISE_FLOOR = 0.02


@dataclass(frozen=True, slots=True)
class Option:
    """One value of a knob: a label for people, and the settings it sets (none for
    the default: the server decides)."""

    label: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Knob:
    name: str
    options: tuple[Option, ...]  # the first is the default


@dataclass(frozen=True, slots=True)
class Measurement:
    sentences_per_s: float  # of answered requests
    p99_ms: float | None  # of answered requests; None when none was
    error_rate: float  # requests failed (neither answered nor refused), of all sent
    refused_rate: float = 0.0  # requests refused by admission (429), of all sent
    failed: str | None = None  # why the candidate could not be measured at all


@dataclass(frozen=True, slots=True)
class Goal:
    """What is better: more sentences/s, or a lower p99; and what disqualifies.

    Refusals (429) cost throughput only what they leave unanswered, which the
    sentences/s already count; a lower p99 bought by refusing more is no better,
    so under the latency target refusals past ``max_error_rate`` disqualify.
    """

    target: Literal["throughput", "latency"] = "throughput"
    max_p99_ms: float | None = None
    max_error_rate: float = 0.01

    def problem(self, measured: Measurement) -> str | None:
        """Why ``measured`` cannot win, or None."""
        if measured.failed is not None:
            return measured.failed
        if measured.error_rate > self.max_error_rate:
            return f"errors {measured.error_rate:.1%}"
        if self.target == "latency" and measured.refused_rate > self.max_error_rate:
            return f"refused {measured.refused_rate:.1%}"
        if measured.p99_ms is None:
            return "nothing answered"
        if self.max_p99_ms is not None and measured.p99_ms > self.max_p99_ms:
            return f"p99 over {self.max_p99_ms:g} ms"
        return None

    def gain(self, measured: Measurement, over: Measurement) -> float:
        """How much better ``measured`` is than ``over``, relative (0.1: 10% better);
        infinite when only ``over`` is disqualified."""
        if self.problem(over) is not None:
            return math.inf if self.problem(measured) is None else 0.0
        if self.problem(measured) is not None:
            return -math.inf
        if self.target == "throughput":
            return measured.sentences_per_s / over.sentences_per_s - 1
        assert measured.p99_ms is not None
        assert over.p99_ms is not None
        return over.p99_ms / measured.p99_ms - 1


@dataclass(frozen=True, slots=True)
class Tried:
    knob: str  # "defaults" for the runs of the defaults
    option: str
    settings: Mapping[str, Any]
    measured: Measurement
    gain: float | None  # over the incumbent at the time; None for the defaults' runs
    verdict: str


@dataclass(frozen=True, slots=True)
class Outcome:
    settings: dict[str, Any]  # the best configuration found
    kept: tuple[tuple[str, str], ...]  # (knob, option) changes that beat the noise
    tried: tuple[Tried, ...]
    noise: float
    not_tried: tuple[str, ...]  # "knob=option" the budget left no time for


Measure = Callable[[Mapping[str, Any]], Measurement]


def search(
    knobs: Sequence[Knob],
    measure: Measure,
    goal: Goal,
    *,
    budget_seconds: float,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    started = clock()
    chosen = {knob.name: knob.options[0] for knob in knobs}
    tried: list[Tried] = []
    not_tried: list[str] = []
    kept: list[tuple[str, str]] = []
    durations: list[float] = []

    def settings() -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for option in chosen.values():
            merged.update(option.settings)
        return merged

    def run(candidate: Mapping[str, Any]) -> Measurement:
        began = clock()
        measured = measure(candidate)
        durations.append(clock() - began)
        return measured

    def time_for_one_more() -> bool:
        typical = sum(durations) / len(durations)
        return clock() - started + typical <= budget_seconds

    first, second = run(settings()), run(settings())
    noise = max(NOISE_FLOOR, _difference(goal, first, second))
    for measured in (first, second):
        tried.append(Tried("defaults", "defaults", settings(), measured, None, "the baseline"))
    incumbent = second
    for knob in knobs:
        contenders: list[tuple[float, Option, Measurement, int]] = []
        for option in knob.options:
            if option is chosen[knob.name]:
                continue
            if not time_for_one_more():
                not_tried.append(f"{knob.name}={option.label}")
                continue
            candidate = settings() | dict(option.settings)
            measured = run(candidate)
            problem = goal.problem(measured)
            gain = goal.gain(measured, incumbent)
            if problem is not None:
                verdict = problem
            elif gain > noise:
                verdict = "faster" if goal.target == "throughput" else "lower p99"
                contenders.append((gain, option, measured, len(tried)))
            elif gain >= -noise:
                verdict = "within the noise"
            else:
                verdict = "worse"
            tried.append(Tried(knob.name, option.label, candidate, measured, gain, verdict))
        if not contenders:
            continue
        gain, option, measured, index = max(contenders, key=lambda c: c[0])
        if time_for_one_more():
            # The incumbent again, now: the contender must beat this too.
            again = run(settings())
            again_gain = goal.gain(measured, again)
            tried.append(
                Tried(knob.name, "(best so far, again)", settings(), again, None, "recheck")
            )
            if again_gain <= noise:
                tried[index] = _with_verdict(
                    tried[index], f"not confirmed (+{again_gain:.1%} over the recheck)"
                )
                incumbent = again
                continue
        tried[index] = _with_verdict(tried[index], "kept")
        chosen[knob.name] = option
        kept.append((knob.name, option.label))
        incumbent = measured
    return Outcome(settings(), tuple(kept), tuple(tried), noise, tuple(not_tried))


def _difference(goal: Goal, first: Measurement, second: Measurement) -> float:
    """The relative difference of the goal's figure between two runs of the same."""
    if goal.target == "throughput":
        low, high = sorted((first.sentences_per_s, second.sentences_per_s))
    elif first.p99_ms is not None and second.p99_ms is not None:
        low, high = sorted((first.p99_ms, second.p99_ms))
    else:
        return 0.0
    return high / low - 1 if low > 0 else 0.0


def _with_verdict(tried: Tried, verdict: str) -> Tried:
    return Tried(tried.knob, tried.option, tried.settings, tried.measured, tried.gain, verdict)
