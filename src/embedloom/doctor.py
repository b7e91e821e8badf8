"""``embedloom doctor``: the concurrency picture of this machine and configuration.

``probe_machine`` reads the machine (cores, CPU features, GPUs, runtimes, the
threads alive in this process); ``diagnose`` is pure: settings + environment +
probe in, findings out, so every check is unit-tested with made-up machines.
An ``error`` finding makes the command exit non-zero, to gate a deployment.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from embedloom._version import __version__
from embedloom.config import Settings, SettingsError
from embedloom.cpu import cpu_flags, cpu_model
from embedloom.sharing import SharingPlan, plan_sharing, worker_budget
from embedloom.threads import CoreCount, usable_cores

__all__ = [
    "Finding",
    "MachineProbe",
    "Report",
    "diagnose",
    "probe_machine",
    "render",
    "run_doctor",
]

# Variables that size thread pools of libraries that may live in this process.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "RAYON_NUM_THREADS",
)
OTHER_VARIABLES = (
    "TOKENIZERS_PARALLELISM",
    "OMP_WAIT_POLICY",
    "KMP_AFFINITY",
    "GOMP_CPU_AFFINITY",
    "CUDA_VISIBLE_DEVICES",
)
_CPU_FEATURES = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
# Offload threads tokenise requests (see embedloom.offload): brief work per request.
_TOKENIZING_THREADS = 4


@dataclass(frozen=True, slots=True)
class Finding:
    level: Literal["error", "warning", "info"]
    message: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class MachineProbe:
    cores: CoreCount
    cpu_model: str
    cpu_features: frozenset[str]
    gpus: tuple[str, ...]
    torch: str | None  # version
    torch_threads: tuple[int, int] | None  # intra-op, inter-op, as this process has them
    torch_parallel_backend: str | None
    onnxruntime: str | None
    tokenizers: str | None
    live_threads: tuple[str, ...]  # OS threads of this process, by name
    memory_available: int | None = None  # bytes (MemAvailable), None where unknown


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """One served model's share of the report: its plan and the weights it holds."""

    name: str
    ref: str
    plan: SharingPlan | None
    weights_bytes: int | None  # one copy, on disk; None when not found without fetching
    copies: int  # weight copies in memory: replicas × workers, or 1 when preloaded

    @property
    def memory_bytes(self) -> int | None:
        return None if self.weights_bytes is None else self.weights_bytes * self.copies


@dataclass(frozen=True, slots=True)
class Report:
    machine: MachineProbe
    settings: Settings
    environment: dict[str, str | None]
    plan: SharingPlan | None
    findings: list[Finding] = field(default_factory=list)
    models: tuple[ModelPlan, ...] = ()

    @property
    def failed(self) -> bool:
        return any(f.level == "error" for f in self.findings)


def diagnose(settings: Settings, environ: Mapping[str, str], machine: MachineProbe) -> Report:
    environment = {name: environ.get(name) for name in (*THREAD_VARIABLES, *OTHER_VARIABLES)}
    findings: list[Finding] = []
    models: tuple[ModelPlan, ...] = ()
    try:
        per_worker = worker_budget(settings, cores=machine.cores.usable)
    except SettingsError as exc:
        findings.append(Finding("error", str(exc), "change the flags named above"))
    else:
        models = _model_plans(settings, machine, per_worker, findings)
    for model in models:
        if model.plan is not None:
            findings += _budget_findings(model.plan, machine, workers=settings.workers)
    plan = models[0].plan if models else None
    if plan is not None:
        findings += _environment_findings(plan, environment)
        findings += _memory_findings(models, machine)
    findings += _fork_findings(machine)
    threads = {model.name: model.plan.threads_per_replica for model in models if model.plan}
    for spec in settings.models:
        findings += _variant_findings(
            settings.for_model(spec.name), machine, threads.get(spec.name)
        )
    # Models with the same settings find the same things: once each.
    return Report(machine, settings, environment, plan, list(dict.fromkeys(findings)), models)


def _model_plans(
    settings: Settings, machine: MachineProbe, per_worker: int, findings: list[Finding]
) -> tuple[ModelPlan, ...]:
    """Each model planned as if alone within the per-worker budget (the compute slots
    keep them within it together, ``sharing.slots``); a model whose plan cannot
    work is an error finding."""
    several = len(settings.models) > 1
    plans = []
    for spec in settings.models:
        own = settings.for_model(spec.name).replace(threads=per_worker)
        plan: SharingPlan | None = None
        try:
            plan = plan_sharing(own, cores=machine.cores.usable, gpus=len(machine.gpus))
        except SettingsError as exc:
            where = f"model {spec.name}: " if several else ""
            findings.append(Finding("error", f"{where}{exc}", "change the flags named above"))
        replicas = plan.replicas if plan is not None else 1
        copies = 1 if settings.preload else replicas * settings.workers
        plans.append(ModelPlan(spec.name, spec.ref, plan, _weights_bytes(own), copies))
    return tuple(plans)


def _local_model_dir(settings: Settings) -> Path | None:
    """The model's directory if it is on this machine (nothing is fetched)."""
    from embedloom.errors import EmbedloomError
    from embedloom.store import ModelStore, resolve_model

    try:
        store = ModelStore.for_settings(settings.replace(offline=True))
        return resolve_model(settings.model_ref, store=store).path
    except (EmbedloomError, OSError):
        return None


def _weights_bytes(settings: Settings) -> int | None:
    """The model's weight files on disk, found without fetching anything."""
    path = _local_model_dir(settings)
    if path is None:
        return None
    for pattern in ("*.safetensors", "*.bin"):
        sizes = [f.stat().st_size for f in path.rglob(pattern) if f.is_file()]
        if sizes:
            return sum(sizes)
    return None


def _memory_findings(models: tuple[ModelPlan, ...], machine: MachineProbe) -> list[Finding]:
    known = [m.memory_bytes for m in models if m.memory_bytes is not None]
    if not known or machine.memory_available is None:
        return []
    total = sum(known)
    if total <= machine.memory_available:
        return []
    return [
        Finding(
            "warning",
            f"the models' weights alone need about {total / 2**20:,.0f} MiB in memory "
            f"(copies: {', '.join(f'{m.name} × {m.copies}' for m in models)}), more than "
            f"the {machine.memory_available / 2**20:,.0f} MiB available",
            "serve fewer models or replicas, use --preload with --workers, or set "
            "--max-loaded-models",
        )
    ]


def _variant_findings(
    settings: Settings, machine: MachineProbe, threads: int | None
) -> list[Finding]:
    from embedloom.errors import BackendError
    from embedloom.tasks import model_kind
    from embedloom.variants.catalog import requested_variants, unsupported_reason

    asked = f"--backend {settings.backend} --dtype {settings.dtype}"
    try:
        variants = requested_variants(settings.backend, settings.dtype)
    except BackendError as exc:
        return [Finding("error", str(exc), "choose a variant embedloom offers")]
    device = "cuda" if machine.gpus else "cpu"
    local = _local_model_dir(settings)
    kind = model_kind(local) if local is not None else "embedding"
    reasons = {v: unsupported_reason(v, device, machine.cpu_features, kind=kind) for v in variants}
    runnable = [str(v) for v, reason in reasons.items() if reason is None]
    refused = [f"{v} ({reason})" for v, reason in reasons.items() if reason is not None]
    if not runnable:
        return [
            Finding(
                "error",
                f"{asked}: nothing can run here: {'; '.join(refused)}",
                "ask for a variant this machine supports",
            )
        ]
    message = f"{asked} may run {', '.join(runnable)}"
    if runnable != ["torch/fp32"]:
        message += " (each but torch/fp32 after passing the accuracy gate)"
    if refused:
        message += f"; not here: {'; '.join(refused)}"
    findings = [Finding("info", message)]
    if local is not None and threads is not None and len(runnable) > 1:
        findings.append(_trial_finding(settings, local, device, threads))
    return findings


def _trial_finding(settings: Settings, model_dir: Path, device: str, threads: int) -> Finding:
    """What the recorded trial chose here, and how to run it again."""
    from embedloom.store import ModelStore
    from embedloom.variants.choice import recorded_choice

    try:
        choice = recorded_choice(
            model_dir,
            ModelStore.for_settings(settings),
            backend=settings.backend,
            dtype=settings.dtype,
            threads=threads,
            device=device,
        )
    except Exception as exc:  # a report, not a start: say what could not be read
        return Finding("info", f"could not read the variant trial's record here: {exc}")
    if choice is None:
        return Finding(
            "info",
            "no variant trial recorded for these flags yet: the first start runs one "
            "(`embedloom variants` runs it now and shows its figures)",
        )
    return Finding(
        "info",
        f"the variant trial chose {choice.variant}: {choice.reason} "
        "(`embedloom variants` shows every figure; `embedloom variants --retry` runs the "
        "trial again after a hardware or library change; `--build` builds int8)",
    )


def _budget_findings(plan: SharingPlan, machine: MachineProbe, *, workers: int) -> list[Finding]:
    findings = []
    usable = machine.cores.usable
    compute_threads = workers * plan.compute_threads
    if compute_threads > usable:
        findings.append(
            Finding(
                "error",
                f"oversubscribed: {compute_threads} compute threads ({workers} worker(s) × "
                f"{plan.replicas if plan.strategy != 'locked' else 1} running model(s) × "
                f"{plan.threads_per_replica}) on {usable} usable cores; threads will wait "
                "on each other's cores and throughput falls",
                f"use --threads {usable} (or less), or leave --threads at 0",
            )
        )
    idle = plan.budget - plan.compute_threads
    if plan.strategy == "replicas" and idle > 0:
        findings.append(
            Finding(
                "warning",
                f"{idle} thread(s) of the budget of {plan.budget} go unused: {plan.replicas} "
                f"replicas × {plan.threads_per_replica} threads",
                "pick --replicas that divides --threads",
            )
        )
    if machine.gpus and plan.strategy != "dedicated":
        findings.append(
            Finding(
                "warning",
                f"{plan.strategy} on a GPU: its inference threads contend for one device",
                "use --sharing dedicated (what auto picks on a GPU)",
            )
        )
    return findings


def _environment_findings(
    plan: SharingPlan, environment: Mapping[str, str | None]
) -> list[Finding]:
    findings = []
    for name in THREAD_VARIABLES:
        raw = environment.get(name)
        if raw is None:
            continue
        try:
            value = int(raw)
        except ValueError:
            findings.append(Finding("warning", f"{name}={raw!r} is not a number", f"unset {name}"))
            continue
        if value > plan.threads_per_replica:
            findings.append(
                Finding(
                    "warning",
                    f"{name}={value} contradicts the plan of {plan.threads_per_replica} "
                    "thread(s) per replica: embedloom sizes torch's pool itself, but any other "
                    f"library in the process that reads {name} will start more threads",
                    f"unset {name}, or set it to {plan.threads_per_replica}",
                )
            )
    if (environment.get("TOKENIZERS_PARALLELISM") or "").lower() in {"1", "true", "yes", "on"}:
        findings.append(
            Finding(
                "warning",
                "TOKENIZERS_PARALLELISM is on: any code calling the tokenizers library's "
                "batch functions starts a thread pool outside the budget, and that pool "
                "does not survive a fork (embedloom itself tokenises without it)",
                "unset TOKENIZERS_PARALLELISM or set it to false",
            )
        )
    return findings


def _fork_findings(machine: MachineProbe) -> list[Finding]:
    others = len(machine.live_threads) - 1
    if others <= 0:
        return [Finding("info", "one thread alive in this process: safe to fork")]
    # Importing numpy starts OpenBLAS's pool, so any process that has loaded a model
    # has native threads; a forked child gets none of them (only the forking thread).
    return [
        Finding(
            "info",
            f"{others} native thread(s) besides the main one are alive in this process after "
            "importing numpy and torch (OpenBLAS starts its pool at import); a process forked "
            "after a model has loaded inherits locks held by such pools but not the threads",
            "start worker processes with 'spawn' or 'forkserver', or fork before loading",
        )
    ]


def probe_machine() -> MachineProbe:
    """Read this machine and process. Imports torch, but starts none of its pools."""
    try:
        import torch

        torch_version: str | None = torch.__version__
        threads: tuple[int, int] | None = (torch.get_num_threads(), torch.get_num_interop_threads())
        info = torch.__config__.parallel_info()
        backend = next(
            (
                line.split(":", 1)[1].strip()
                for line in info.splitlines()
                if "parallel backend" in line
            ),
            None,
        )
        gpus = (
            tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            if torch.cuda.is_available()
            else ()
        )
    except ImportError:
        torch_version, threads, backend, gpus = None, None, None, ()
    return MachineProbe(
        cores=usable_cores(),
        cpu_model=cpu_model(),
        cpu_features=cpu_flags(),
        gpus=gpus,
        torch=torch_version,
        torch_threads=threads,
        torch_parallel_backend=backend,
        onnxruntime=_version_of("onnxruntime"),
        tokenizers=_version_of("tokenizers"),
        live_threads=_live_threads(),
        memory_available=_memory_available(),
    )


def _memory_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _live_threads() -> tuple[str, ...]:
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return ("main",)
    names = []
    for task in sorted(tasks.iterdir(), key=lambda p: int(p.name)):
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            continue  # the thread ended while we looked
    return tuple(names) or ("main",)


def render(report: Report) -> str:
    machine, plan = report.machine, report.plan
    features = " ".join(f for f in _CPU_FEATURES if f in machine.cpu_features) or "none of note"
    lines = [
        f"embedloom doctor {__version__}",
        "",
        "Machine",
        f"  cores         {machine.cores.describe()}",
        f"  CPU           {machine.cpu_model}; {features}",
        f"  GPUs          {', '.join(machine.gpus) or 'none'}",
        "",
        "Runtimes",
    ]
    if machine.torch is None:
        lines.append("  torch         not installed")
    else:
        intra, inter = machine.torch_threads or (0, 0)
        lines.append(
            f"  torch         {machine.torch}, {machine.torch_parallel_backend} backend; this "
            f"process: {intra} intra-op, {inter} inter-op threads (defaults until a model loads)"
        )
    lines += [
        f"  onnxruntime   {machine.onnxruntime or 'not installed'}",
        f"  tokenizers    {machine.tokenizers or 'not installed'}",
        "",
        "Environment",
    ]
    for name, value in report.environment.items():
        lines.append(f"  {name:<24}{'(not set)' if value is None else value}")
    lines += [
        "",
        f"Plan (--sharing {report.settings.sharing}, --threads {report.settings.threads})",
    ]
    if plan is None:
        lines.append("  none: the configuration is invalid (see below)")
    else:
        lines += [
            f"  workers       {report.settings.workers} process(es), budget {plan.budget} each",
            f"  strategy      {plan.strategy}: {plan.reason}",
            f"  models        {plan.replicas} instance(s), {plan.inference_threads} "
            "inference thread(s)",
            f"  threads       {plan.threads_per_replica} intra-op each, at most "
            f"{plan.compute_threads} computing at once, budget {plan.budget}",
            f"  tokenizing    up to {_TOKENIZING_THREADS} offload threads, one request each, "
            "no tokenizers thread pool",
        ]
    if len(report.models) > 1 or any(m.memory_bytes for m in report.models):
        lines += ["", "Models (each planned as if alone; together they share the budget's slots)"]
        for model in report.models:
            shape = (
                f"{model.plan.replicas} × {model.plan.threads_per_replica} thread(s)"
                if model.plan is not None
                else "no valid plan"
            )
            weights = (
                f"weights {model.weights_bytes / 2**20:,.0f} MiB × {model.copies} in memory"
                if model.weights_bytes is not None
                else "weights not found without fetching"
            )
            lines.append(f"  {model.name:<14}{model.ref}: {shape}; {weights}")
    lines += ["", "Findings"]
    for finding in sorted(
        report.findings, key=lambda f: ("error", "warning", "info").index(f.level)
    ):
        lines.append(f"  {finding.level.upper():<8}{finding.message}")
        if finding.fix:
            lines.append(f"  {'':<8}fix: {finding.fix}")
    if not report.failed:
        lines.append("  no errors")
    return "\n".join(lines) + "\n"


def run_doctor(settings: Settings, environ: Mapping[str, str]) -> tuple[str, bool]:
    """The text of the report and whether it found an error."""
    report = diagnose(settings, environ, probe_machine())
    return render(report), report.failed
