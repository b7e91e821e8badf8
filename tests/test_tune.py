"""``embedloom tune``: the search with a fake measurer and a fake clock (which options
it keeps, which it calls noise, what the budget leaves out), the config file it
writes, and one real run on the real model whose file then serves."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from embedloom.config import Settings
from embedloom.config_file import read_config_file
from embedloom.tune.flags import parse_budget
from embedloom.tune.knobs import config_text
from embedloom.tune.search import Goal, Knob, Measurement, Option, search
from tests.helpers import ServerProcess

SECONDS_PER_TRIAL = 10.0

KNOBS = [
    Knob("variant", (Option("auto"), Option("faster", {"variant": "faster"}))),
    Knob("sharing", (Option("auto"), Option("marginal", {"sharing": "marginal"}))),
    Knob(
        "tokens",
        (
            Option("8192"),
            Option("slower", {"tokens": "slower"}),
            Option("best", {"tokens": "best"}),
        ),
    ),
]
# Each option's effect on sentences/s: 20% faster, 1% (inside 2% of noise), 10% slower, 30%.
EFFECT = {"faster": 1.2, "marginal": 1.01, "slower": 0.9, "best": 1.3}


class FakeMachine:
    """Sentences/s = 100 × the chosen options' effects; the second run of a
    configuration is 2% faster than the first (the noise), later runs exact;
    each run takes SECONDS_PER_TRIAL of the fake clock."""

    def __init__(self, drift: Mapping[int, float] | None = None) -> None:
        self.now = 0.0
        self.runs: list[dict[str, Any]] = []
        self._drift = drift or {}

    def clock(self) -> float:
        return self.now

    def __call__(self, candidate: Mapping[str, Any]) -> Measurement:
        self.now += SECONDS_PER_TRIAL
        self.runs.append(dict(candidate))
        rate = 100.0
        for value in candidate.values():
            rate *= EFFECT[value]
        rate *= 1.02 if len(self.runs) == 2 else self._drift.get(len(self.runs), 1.0)
        return Measurement(rate, 1000.0 / rate * 50, 0.0)


def test_keeps_what_beats_the_noise_and_calls_a_margin_inside_it_noise() -> None:
    machine = FakeMachine()
    outcome = search(KNOBS, machine, Goal(), budget_seconds=1000, clock=machine.clock)
    assert outcome.noise == pytest.approx(0.02)
    assert outcome.kept == (("variant", "faster"), ("tokens", "best"))
    assert outcome.settings == {"variant": "faster", "tokens": "best"}
    verdicts = {(t.knob, t.option): t.verdict for t in outcome.tried}
    assert verdicts[("variant", "faster")] == "kept"
    assert verdicts[("sharing", "marginal")] == "within the noise"
    assert verdicts[("tokens", "slower")] == "worse"
    assert verdicts[("tokens", "best")] == "kept"
    assert outcome.not_tried == ()
    # Two runs of the defaults; then each option, with a recheck of the incumbent
    # before each change kept.
    assert [t.knob for t in outcome.tried].count("defaults") == 2
    assert len(machine.runs) == 2 + 1 + 1 + 1 + 2 + 1


def test_nothing_kept_when_no_option_clears_the_noise() -> None:
    knobs = [Knob("sharing", (Option("auto"), Option("marginal", {"sharing": "marginal"})))]
    machine = FakeMachine()
    outcome = search(knobs, machine, Goal(), budget_seconds=1000, clock=machine.clock)
    assert outcome.kept == ()
    assert outcome.settings == {}


def test_a_faster_run_the_incumbents_recheck_matches_is_not_kept() -> None:
    # Run 4 is the incumbent's recheck after "faster" (run 3): the machine sped up
    # by as much, so the gain was the drift's.
    knobs = KNOBS[:1]
    machine = FakeMachine(drift={4: 1.2})
    outcome = search(knobs, machine, Goal(), budget_seconds=1000, clock=machine.clock)
    assert outcome.kept == ()
    [faster] = [t for t in outcome.tried if t.option == "faster"]
    assert faster.verdict.startswith("not confirmed")


def test_a_candidate_whose_server_does_not_start_is_a_verdict_not_the_end() -> None:
    broken = "the candidate's server exited (2): 2 replicas need at least 2 compute threads"
    knobs = [
        Knob("workers", (Option("1"), Option("2", {"workers": 2}))),
        Knob("variant", (Option("auto"), Option("faster", {"variant": "faster"}))),
    ]
    machine = FakeMachine()

    def measure(candidate: Mapping[str, Any]) -> Measurement:
        if candidate.get("workers") == 2:
            machine.now += SECONDS_PER_TRIAL
            return Measurement(0.0, None, 1.0, failed=broken)
        return machine(candidate)

    outcome = search(knobs, measure, Goal(), budget_seconds=1000, clock=machine.clock)
    verdicts = {t.option: t.verdict for t in outcome.tried}
    assert verdicts["2"] == broken
    assert outcome.kept == (("variant", "faster"),)


def test_the_budget_bounds_the_search_and_lists_what_it_left_out() -> None:
    machine = FakeMachine()
    outcome = search(KNOBS, machine, Goal(), budget_seconds=45, clock=machine.clock)
    # 20 s of defaults, then trials while one more fits: the variant option (30 s),
    # its recheck (40 s); nothing after.
    assert len(machine.runs) == 4
    assert outcome.kept == (("variant", "faster"),)
    assert outcome.not_tried == ("sharing=marginal", "tokens=slower", "tokens=best")


def test_latency_goal_prefers_a_lower_p99_and_refuses_one_over_the_limit() -> None:
    figures = {
        "auto": Measurement(100, 500, 0.0),
        "quick": Measurement(90, 300, 0.0),
        "quicker": Measurement(80, 200, 0.05),  # refuses 5%: disqualified
    }
    knobs = [
        Knob(
            "wait",
            (Option("auto"), Option("quick", {"w": "quick"}), Option("quicker", {"w": "quicker"})),
        )
    ]

    def measure(candidate: Mapping[str, Any]) -> Measurement:
        return figures[candidate.get("w", "auto")]

    outcome = search(knobs, measure, Goal("latency", max_p99_ms=1000), budget_seconds=1e9)
    assert outcome.kept == (("wait", "quick"),)
    verdicts = {t.option: t.verdict for t in outcome.tried}
    assert verdicts["quicker"] == "errors 5.0%"
    assert Goal("latency", max_p99_ms=250).problem(figures["quick"]) == "p99 over 250 ms"
    # Refusals: counted in throughput's sentences/s; a lower p99 bought with them is no win.
    refusing = Measurement(100, 300, 0.0, refused_rate=0.05)
    assert Goal("throughput").problem(refusing) is None
    assert Goal("latency").problem(refusing) == "refused 5.0%"


def test_the_written_file_reads_back_as_the_settings_it_names(tmp_path: Path) -> None:
    settings = Settings(model=("small=all-MiniLM-L6-v2",))
    tuned = {"workers": 2, "sharing": "dedicated", "max_batch_tokens": 4096, "backend": "onnx"}
    path = tmp_path / "tuned.toml"
    path.write_text(config_text(settings, tuned, header=["kept: workers = 2"]))
    values = read_config_file(path)
    assert values["workers"] == 2
    assert values["model"] == ("small=all-MiniLM-L6-v2",)
    [(name, own)] = values["model_settings"]
    assert name == "small"
    assert dict(own) == {"sharing": "dedicated", "max_batch_tokens": 4096, "backend": "onnx"}


@pytest.mark.parametrize(("text", "seconds"), [("5m", 300), ("90s", 90), ("1h", 3600), ("45", 45)])
def test_budgets_read_as_people_write_them(text: str, seconds: float) -> None:
    assert parse_budget(text) == seconds


@pytest.mark.model
def test_tune_on_the_real_model_writes_a_config_that_serves(
    tmp_path: Path, texts: list[str]
) -> None:
    output = tmp_path / "tuned.toml"
    sample = tmp_path / "texts.txt"
    sample.write_text("\n".join(texts) + "\n")
    command = [
        str(Path(sys.executable).with_name("embedloom")),
        "tune",
        "--texts",
        str(sample),
        "--budget",
        "30s",
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
        "--concurrency",
        "4",
        "--output",
        str(output),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = done.stdout
    assert report.count("| defaults | defaults |") == 2
    assert f"wrote {output}" in report
    # The suite pins fp32 torch (conftest): pinned, it is in the file.
    values = read_config_file(output)
    assert dict(values["model_settings"][0][1])["backend"] == "torch"
    # Refused, not overwritten, on a second run without --overwrite.
    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2
    assert again.stderr.startswith("embedloom: ")
    assert "--overwrite" in again.stderr
    with ServerProcess.start("--config", str(output)) as server:
        reply = httpx.post(f"{server.url}/embed", json={"inputs": texts[:2]}, timeout=60)
    assert reply.status_code == 200
    assert len(reply.json()) == 2
