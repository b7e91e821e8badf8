"""The accuracy gate's arithmetic and the choice among variants, with fake backends:
a variant that fails the gate is never chosen, however fast it is."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from embedloom.backends.base import BackendFactory, TokenizedInput
from embedloom.errors import BackendError
from embedloom.store import ModelStore
from embedloom.variants import choice as choice_module
from embedloom.variants.catalog import REFERENCE, Variant
from embedloom.variants.choice import Candidate, choose_variant, pick, try_variants
from embedloom.variants.gate import GateFigures, calibration_texts, measure
from tests.fakes import FakeBackend

BF16 = Variant("torch", "bf16")
ONNX = Variant("onnx", "fp32")
INT8 = Variant("onnx", "int8")


def unit_rows(rows: int, dims: int = 16, seed: int = 0) -> npt.NDArray[np.float32]:
    vectors = np.random.default_rng(seed).normal(size=(rows, dims)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# -- the gate -------------------------------------------------------------------


def test_identical_vectors_pass_with_perfect_figures() -> None:
    vectors = unit_rows(40)
    figures = measure(vectors, vectors * 3)  # scale does not matter: cosines
    assert figures.to_json() == pytest.approx(dict.fromkeys(figures.to_json(), 1.0))
    assert figures.passed


def test_one_bad_row_fails_on_the_minimum_alone() -> None:
    reference = unit_rows(200)
    candidate = reference.copy()
    candidate[7] = reference[7] + 0.2 * unit_rows(1, seed=9)[0]  # cosine about 0.98
    figures = measure(reference, candidate)
    assert figures.mean_cosine > 0.999  # the mean hides it…
    assert figures.min_cosine < 0.99  # …the minimum does not
    assert f"min cosine {figures.min_cosine:.5f} < 0.995" in figures.shortfalls()
    assert not figures.passed


def test_shuffled_neighbourhoods_fail_the_overlap() -> None:
    reference = unit_rows(60)
    # Tiny, independent noise keeps cosines near 1 but reorders near ties among
    # 60 random vectors in 16 dimensions.
    noisy = reference + np.random.default_rng(1).normal(scale=0.05, size=reference.shape)
    figures = measure(reference, noisy.astype(np.float32))
    assert figures.neighbour_overlap < 0.9
    assert any("overlap" in s for s in figures.shortfalls())


def test_the_calibration_set_is_fixed_and_shipped() -> None:
    texts = calibration_texts()
    assert len(texts) == 140
    assert len(set(texts)) == 140
    assert texts[0].startswith("The central bank raised interest rates")


# -- picking --------------------------------------------------------------------


def test_pick_takes_the_fastest_usable_and_says_why() -> None:
    chosen = pick(
        [
            Candidate(REFERENCE, sentences_per_second=200.0),
            Candidate(BF16, gate=GateFigures(0.99995, 0.9999, 0.99), sentences_per_second=400.0),
            Candidate(INT8, refused="failed the accuracy gate: mean cosine 0.99 < 0.999"),
        ]
    )
    assert chosen.variant == BF16
    assert chosen.gate == GateFigures(0.99995, 0.9999, 0.99)
    assert chosen.reason.startswith("fastest of torch/fp32 200/s, torch/bf16 400/s")
    assert "refused: onnx/int8 (failed the accuracy gate" in chosen.reason


def test_when_every_variant_is_refused_the_error_lists_each_reason() -> None:
    with pytest.raises(BackendError, match=r"onnx/int8: failed the accuracy gate.*min cosine"):
        pick([Candidate(INT8, refused="failed the accuracy gate: min cosine 0.98 < 0.995")])


class FakeClock:
    """The probe's clock: time passes only when a fake variant works, by its cost
    per input times a random factor of spread ``jitter`` (the machine's drift)."""

    def __init__(self, jitter: float, seed: int) -> None:
        self.now = 0.0
        self.jitter = jitter
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float) -> None:
        self.now += seconds * (1 + self.rng.uniform(-self.jitter, self.jitter))


class Variantish(FakeBackend):
    """A fake variant: the reference's vectors, each component scaled by a random
    factor around 1 of spread ``noise``, at a cost of ``seconds_per_batch`` of wall
    time (a cost, not synchronisation) or of ``clock``'s time per input."""

    def __init__(
        self,
        *,
        noise: float = 0.0,
        seconds_per_batch: float = 0.0,
        clock: FakeClock | None = None,
        seconds_per_input: float = 0.0,
    ) -> None:
        super().__init__(max_input_tokens=200)
        self._noise = noise
        self._cost = seconds_per_batch
        self._clock = clock
        self._per_input = seconds_per_input

    def embed(self, batch: Sequence[TokenizedInput]) -> npt.NDArray[np.float32]:
        if self._clock is not None:
            self._clock.work(self._per_input * len(batch))
        if self._cost:
            time.sleep(self._cost)
        vectors = super().embed(batch)
        if self._noise:
            rng = np.random.default_rng(len(batch))
            vectors = vectors * rng.normal(1.0, self._noise, size=vectors.shape)
        return np.asarray(vectors, dtype=np.float32)


def test_auto_never_picks_a_variant_that_failed_the_gate_however_fast() -> None:
    backends: dict[Variant, BackendFactory] = {
        REFERENCE: lambda: Variantish(seconds_per_batch=0.004),
        ONNX: lambda: Variantish(seconds_per_batch=0.002),
        # Broken: five times faster than the next, and its vectors are noise.
        INT8: lambda: Variantish(noise=0.5),
    }
    candidates = try_variants(list(backends), backends.__getitem__, device="cpu", rounds=2)
    by_variant = {c.variant: c for c in candidates}
    assert by_variant[INT8].refused is not None
    assert by_variant[INT8].refused.startswith("failed the accuracy gate: mean cosine")
    assert by_variant[INT8].sentences_per_second is None  # never even timed
    assert by_variant[INT8].gate is not None
    assert not by_variant[INT8].gate.passed
    assert by_variant[ONNX].gate is not None
    assert by_variant[ONNX].gate.passed
    chosen = pick(candidates)
    assert chosen.variant == ONNX
    assert "refused: onnx/int8" in chosen.reason


def chosen_with_fake_clock(onnx_speedup: float, jitter: float, seed: int) -> Variant:
    clock = FakeClock(jitter, seed)
    backends: dict[Variant, BackendFactory] = {
        REFERENCE: lambda: Variantish(clock=clock, seconds_per_input=0.01),
        ONNX: lambda: Variantish(clock=clock, seconds_per_input=0.01 / onnx_speedup),
    }
    candidates = try_variants(list(backends), backends.__getitem__, device="cpu", clock=clock)
    assert all(len(c.rounds) == 4 for c in candidates), candidates
    return pick(candidates).variant


def test_a_difference_within_the_noise_never_flips_the_choice() -> None:
    # ONNX 1% faster, the machine drifting ±1% between timings: below the 3%
    # margin, every run keeps the variant closest to fp32 (the reference).
    chosen = {chosen_with_fake_clock(1.01, 0.01, seed) for seed in range(20)}
    assert chosen == {REFERENCE}


def test_a_difference_beyond_the_noise_is_chosen_every_time() -> None:
    chosen = {chosen_with_fake_clock(1.3, 0.05, seed) for seed in range(20)}
    assert chosen == {ONNX}


def test_pick_keeps_the_most_accurate_of_variants_the_probe_cannot_tell_apart() -> None:
    close = Candidate(BF16, gate=GateFigures(0.9999, 0.999, 0.99), rounds=(100, 130, 101, 99))
    closer = Candidate(ONNX, gate=GateFigures(1.0, 1.0, 1.0), rounds=(110, 100, 100, 102))
    chosen = pick([close, closer])
    assert chosen.variant == ONNX
    assert "torch/bf16 not faster by more than 3% in every round" in chosen.reason


def test_a_variant_that_raises_is_refused_and_the_rest_still_tried() -> None:
    def broken() -> Variantish:
        raise RuntimeError("export failed")

    backends: dict[Variant, BackendFactory] = {REFERENCE: Variantish, ONNX: broken}
    candidates = try_variants(list(backends), backends.__getitem__, device="cpu")
    assert candidates[1].refused == "failed to run: RuntimeError: export failed"
    assert pick(candidates).variant == REFERENCE


def test_the_trial_runs_once_per_machine_and_request(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trials: list[Path] = []

    def fake_trial(*args: object, **options: object) -> None:
        record = args[-1]
        assert isinstance(record, Path)
        trials.append(record)
        candidates = [Candidate(REFERENCE, sentences_per_second=1.0), Candidate(INT8, refused="x")]
        record.write_text(json.dumps([c.to_json() for c in candidates]))

    monkeypatch.setattr(choice_module, "_run_trial_process", fake_trial)
    store = ModelStore(tmp_path, offline=True)
    first = choose_variant(model_dir, store, threads=1, device="cpu")
    again = choose_variant(model_dir, store, threads=1, device="cpu")
    assert first == again
    assert first.variant == REFERENCE
    assert len(trials) == 1
    choose_variant(model_dir, store, threads=2, device="cpu")  # another thread count
    assert len(trials) == 2
    # The reference alone needs no trial at all.
    assert choose_variant(model_dir, store, backend="torch", dtype="fp32", threads=1, device="cpu")
    assert len(trials) == 2


def test_a_failed_trial_falls_back_to_the_reference_unless_another_variant_was_asked_for(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crashed_trial(*args: object, **options: object) -> None:
        raise BackendError("trying the auto/auto variants failed (exit -9)")

    monkeypatch.setattr(choice_module, "_run_trial_process", crashed_trial)
    store = ModelStore(tmp_path, offline=True)
    fallback = choose_variant(model_dir, store, threads=1, device="cpu")
    assert fallback.variant == REFERENCE
    assert fallback.reason.startswith("the fp32 reference: the trial failed (trying the auto")
    with pytest.raises(BackendError, match="exit -9"):
        choose_variant(model_dir, store, backend="onnx", dtype="int8", threads=1, device="cpu")
    assert not list((tmp_path / "derived").rglob("candidates.json"))  # nothing recorded


def test_a_store_that_cannot_be_written_falls_back_to_the_reference(
    tmp_path: Path, model_dir: Path
) -> None:
    not_a_directory = tmp_path / "home"
    not_a_directory.write_text("a file where the store's directory should be")
    store = ModelStore(not_a_directory, offline=True)
    fallback = choose_variant(model_dir, store, threads=1, device="cpu")
    assert fallback.variant == REFERENCE
    assert "the trial failed" in fallback.reason


def test_auto_tries_a_slow_to_build_variant_only_once_it_is_built(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = Variant("openvino", "int8")
    trials: list[tuple[str, list[Variant]]] = []

    def fake_trial(*args: object, skip: list[Variant]) -> None:
        record = args[-1]
        assert isinstance(record, Path)
        trials.append((record.parent.name, list(skip)))
        record.write_text(json.dumps([Candidate(REFERENCE).to_json()]))

    monkeypatch.setattr(choice_module, "_run_trial_process", fake_trial)
    store = ModelStore(tmp_path, offline=True)
    choose_variant(model_dir, store, threads=1, device="cpu")
    assert trials[-1][1] == [slow]  # not built: the trial skips it
    assert choice_module.recorded_choice(model_dir, store, threads=1, device="cpu") is not None
    # `embedloom variants --build` builds it: the next start runs a new trial with it.
    store.derived(model_dir, "openvino-v1-int8", lambda into: (into / "model.xml").write_text("x"))
    assert choice_module.recorded_choice(model_dir, store, threads=1, device="cpu") is None
    choose_variant(model_dir, store, threads=1, device="cpu")
    assert len(trials) == 2
    assert trials[-1][1] == []
    assert "-openvinoint8-" in trials[-1][0]
    assert "int8" not in trials[0][0]
    # Forgetting this machine's trials makes the next start run one again.
    assert choice_module.forget_trial(model_dir, store, device="cpu") == 2
    choose_variant(model_dir, store, threads=1, device="cpu")
    assert len(trials) == 3
