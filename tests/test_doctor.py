"""``embedloom doctor``: checks on made-up machines, and the real command's exit code."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from embedloom.config import Settings
from embedloom.doctor import MachineProbe, diagnose, render
from embedloom.store import ModelStore
from embedloom.threads import CoreCount
from embedloom.variants import choice as choice_module
from embedloom.variants.catalog import REFERENCE
from embedloom.variants.choice import Candidate, choose_variant


def machine(cores: int = 2, gpus: tuple[str, ...] = (), threads: int = 1) -> MachineProbe:
    return MachineProbe(
        cores=CoreCount(machine=cores, affinity=cores, cgroup_quota=None, usable=cores),
        cpu_model="Test CPU",
        cpu_features=frozenset({"avx2", "avx512f", "amx_bf16"}),
        gpus=gpus,
        torch="2.13.0",
        torch_threads=(cores, cores),
        torch_parallel_backend="OpenMP",
        onnxruntime=None,
        tokenizers="0.23",
        live_threads=tuple(f"t{i}" for i in range(threads)),
    )


def levels(report: object) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"error": [], "warning": [], "info": []}
    for finding in report.findings:  # type: ignore[attr-defined]
        out[finding.level].append(finding.message)
    return out


def test_a_sound_configuration_has_no_errors_or_warnings() -> None:
    report = diagnose(Settings(), {}, machine())
    assert not report.failed
    assert levels(report)["warning"] == []
    text = render(report)
    assert "strategy      replicas" in text
    assert "no errors" in text


def test_oversubscription_is_an_error_with_the_fix() -> None:
    report = diagnose(Settings(threads=8), {}, machine(cores=2))
    assert report.failed
    (error,) = levels(report)["error"]
    assert "oversubscribed: 8 compute threads" in error
    assert "fix: use --threads 2" in render(report)


def test_impossible_split_is_an_error() -> None:
    report = diagnose(Settings(sharing="replicas", replicas=3, threads=2), {}, machine(cores=4))
    assert report.failed
    assert "3 replicas need at least 3 compute threads" in levels(report)["error"][0]
    assert "none: the configuration is invalid" in render(report)


def test_contradicting_environment_is_a_warning() -> None:
    environ = {"OMP_NUM_THREADS": "8", "TOKENIZERS_PARALLELISM": "true", "MKL_NUM_THREADS": "x"}
    warnings = levels(diagnose(Settings(), environ, machine()))["warning"]
    assert any("OMP_NUM_THREADS=8 contradicts" in w for w in warnings)
    assert any("TOKENIZERS_PARALLELISM is on" in w for w in warnings)
    assert any("MKL_NUM_THREADS='x' is not a number" in w for w in warnings)


def test_gpu_with_replicas_is_a_warning_and_auto_picks_dedicated() -> None:
    gpu = machine(cores=8, gpus=("Test GPU",))
    assert diagnose(Settings(), {}, gpu).plan.strategy == "dedicated"  # type: ignore[union-attr]
    warnings = levels(diagnose(Settings(sharing="replicas"), {}, gpu))["warning"]
    assert any("contend for one device" in w for w in warnings)


def test_unused_budget_and_live_threads_are_reported() -> None:
    report = diagnose(
        Settings(sharing="replicas", replicas=2, threads=5), {}, machine(8, threads=3)
    )
    found = levels(report)
    assert any("1 thread(s) of the budget of 5 go unused" in w for w in found["warning"])
    assert any("2 native thread(s) besides the main one" in i for i in found["info"])
    assert any("may run torch/fp32, torch/bf16, onnx/fp32" in i for i in found["info"])


def test_variants_the_cpu_cannot_run_are_named_with_the_reason() -> None:
    plain = dataclasses.replace(machine(), cpu_features=frozenset({"avx2"}))
    found = levels(diagnose(Settings(backend="torch", dtype="auto"), {}, plain))
    (variants,) = [i for i in found["info"] if "--backend torch --dtype auto" in i]
    assert "may run torch/fp32;" in variants
    assert "torch/bf16 (this CPU has neither AVX512-BF16 nor AMX-BF16" in variants
    assert "torch/fp16 (fp16 has no fast CPU kernels" in variants
    found = levels(diagnose(Settings(backend="torch", dtype="bf16"), {}, plain))
    assert any("nothing can run here: torch/bf16" in e for e in found["error"])
    found = levels(diagnose(Settings(backend="onnx", dtype="bf16"), {}, plain))
    assert any("no variant onnx/bf16" in e for e in found["error"])


def test_the_command_exits_nonzero_on_an_oversubscribed_configuration() -> None:
    embedloom = str(Path(sys.executable).with_name("embedloom"))
    result = subprocess.run(
        [embedloom, "doctor", "--threads", "4096"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "ERROR" in result.stdout
    assert "oversubscribed" in result.stdout
    sound = subprocess.run([embedloom, "doctor"], capture_output=True, text=True, timeout=120)
    assert sound.returncode == 0, sound.stdout
    assert "usable" in sound.stdout


def test_several_models_are_each_planned_and_their_memory_checked(tmp_path: Path) -> None:
    second = tmp_path / "docs-model"
    second.mkdir()
    (second / "config.json").write_text("{}")
    (second / "model.safetensors").write_bytes(b"\0" * 3 * 2**20)
    settings = Settings(model=("all-MiniLM-L6-v2", f"docs={second}"), workers=2)
    report = diagnose(settings, {}, machine(cores=2))
    assert not report.failed
    by_name = {m.name: m for m in report.models}
    assert by_name["docs"].weights_bytes == 3 * 2**20
    assert by_name["docs"].copies == 2  # two workers of one replica each, no preload
    text = render(report)
    assert "docs          " in text
    assert "weights 3 MiB × 2 in memory" in text
    tight = diagnose(settings, {}, dataclasses.replace(machine(cores=2), memory_available=2**20))
    (warning,) = [w for w in levels(tight)["warning"] if "weights alone" in w]
    assert "docs × 2" in warning
    preloaded = diagnose(settings.replace(preload=True), {}, machine(cores=2))
    assert {m.copies for m in preloaded.models} == {1}


def test_a_model_whose_own_plan_cannot_work_is_an_error_naming_it() -> None:
    settings = Settings(
        model=("all-MiniLM-L6-v2", "docs=all-MiniLM-L6-v2"),
        model_settings=(("docs", (("sharing", "replicas"), ("replicas", 3))),),
    )
    report = diagnose(settings, {}, machine(cores=2))
    assert report.failed
    (error,) = levels(report)["error"]
    assert error.startswith("model docs: 3 replicas need at least 3 compute threads")
    assert report.plan is not None  # the default model's plan stands


def test_the_recorded_trial_is_shown_with_how_to_run_it_again(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_trial(*args: object, **options: object) -> None:
        record = args[-1]
        assert isinstance(record, Path)
        candidates = [Candidate(REFERENCE, sentences_per_second=100.0, rounds=(99.0, 101.0))]
        record.write_text(json.dumps([c.to_json() for c in candidates]))

    settings = Settings(home=str(tmp_path), offline=True)
    report = diagnose(settings, {}, machine())
    assert any("no variant trial recorded" in i for i in levels(report)["info"])
    monkeypatch.setattr(choice_module, "_run_trial_process", fake_trial)
    assert report.plan is not None
    threads = report.plan.threads_per_replica
    choose_variant(model_dir, ModelStore(tmp_path, offline=True), threads=threads, device="cpu")
    (shown,) = [i for i in levels(diagnose(settings, {}, machine()))["info"] if "trial" in i]
    assert shown.startswith("the variant trial chose torch/fp32")
    assert "embedloom variants --retry" in shown
