"""``embedloom variants``: build the slow variants, re-run the trial, show its figures.

A server's start never waits minutes for a variant: the ones that take that long
to build (``SLOW_TO_BUILD``: the calibrated int8 model) are built here, when the
user asks, and the next start's trial includes them. ``--retry`` forgets this
machine's trial records first (after a hardware or library change).
"""

from __future__ import annotations

import logging

from embedloom.config import Settings
from embedloom.sharing import plan_sharing
from embedloom.store import ModelStore, resolve_model
from embedloom.tasks import model_kind
from embedloom.threads import usable_cores
from embedloom.variants.catalog import (
    SLOW_TO_BUILD,
    gpus_for,
    open_variant,
    requested_variants,
    unsupported_reason,
)
from embedloom.variants.choice import Choice, choose_variant, forget_trial

__all__ = ["run_variants_command"]

logger = logging.getLogger(__name__)


def run_variants_command(settings: Settings, *, build: bool, retry: bool) -> str:
    """Each model's trial (built and re-run as asked), as a table per model."""
    gpus = max(gpus_for(settings.for_model(spec.name).backend) for spec in settings.models)
    device = "cuda" if gpus else "cpu"
    store = ModelStore.for_settings(settings)
    sections = []
    for spec in settings.models:
        model_settings = settings.for_model(spec.name)
        model_dir = resolve_model(model_settings.model_ref, store=store).path
        plan = plan_sharing(model_settings, cores=usable_cores().usable, gpus=gpus)
        requested = requested_variants(model_settings.backend, model_settings.dtype)
        if retry:
            removed = forget_trial(model_dir, store, device=device)
            logger.info("forgot %d trial record(s) of %s", removed, spec.name)
        if build:
            kind = model_kind(model_dir)
            for variant in requested:
                if variant not in SLOW_TO_BUILD:
                    continue
                if (reason := unsupported_reason(variant, device, kind=kind)) is not None:
                    logger.info("not building %s: %s", variant, reason)
                    continue
                logger.info("building %s of %s (minutes on a few cores)", variant, spec.name)
                open_variant(variant, model_dir, store, threads=1, device=device)
        choice = choose_variant(
            model_dir,
            store,
            backend=model_settings.backend,
            dtype=model_settings.dtype,
            threads=plan.threads_per_replica,
            device=device,
        )
        sections.append(_table(spec.name, choice, plan.threads_per_replica))
    return "\n".join(sections)


def _table(name: str, choice: Choice, threads: int) -> str:
    lines = [
        f"{name}: serves {choice.variant} ({threads} thread(s) per replica)",
        f"  why: {choice.reason}",
    ]
    for candidate in choice.candidates:
        marker = "*" if candidate.variant == choice.variant else " "
        speed = (
            f"{candidate.sentences_per_second:.0f}/s (rounds "
            + ", ".join(f"{r:.0f}" for r in candidate.rounds)
            + ")"
            if candidate.sentences_per_second
            else "not timed"
        )
        if candidate.refused:
            status = f"refused: {candidate.refused}"
        elif candidate.gate is None:
            status = f"{speed}; the reference"
        else:
            figures = ", ".join(f"{k} {v:.5f}" for k, v in candidate.gate.to_json().items())
            status = f"{speed}; gate: {figures}"
        lines.append(f"  {marker} {candidate.variant!s:<14} {status}")
    return "\n".join(lines) + "\n"
