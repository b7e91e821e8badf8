"""Settings → model (store) → sharing plan → chosen variant: what an engine is
built from, worked out before any model is loaded (``Engine.from_settings``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedloom.config import Settings, SettingsError
from embedloom.sharing import SharingPlan, plan_sharing
from embedloom.threads import usable_cores
from embedloom.variants.catalog import gpus_for
from embedloom.variants.choice import Choice

if TYPE_CHECKING:
    from embedloom.store import ModelStore, ResolvedModel

__all__ = ["ModelSetup"]

# The engine's log: these lines are part of its start.
logger = logging.getLogger("embedloom.engine")


@dataclass(frozen=True, slots=True)
class ModelSetup:
    """Where the model is, how it is shared, and which variant runs it."""

    model: ResolvedModel
    store: ModelStore
    plan: SharingPlan
    device: str
    choice: Choice

    @classmethod
    def for_settings(cls, settings: Settings) -> ModelSetup:
        from embedloom.store import ModelStore, resolve_model
        from embedloom.variants.choice import choose_variant

        if len(settings.models) > 1:
            raise SettingsError(
                f"an engine serves one model, and these settings serve {settings.model_names()}; "
                "build each from settings.for_model(NAME), or serve them with a Registry"
            )
        # Before importing torch: a missing model fails fast.
        store = ModelStore.for_settings(settings)
        model = resolve_model(settings.model_ref, store=store)
        gpus = gpus_for(settings.backend)
        plan = plan_sharing(settings, cores=usable_cores().usable, gpus=gpus)
        logger.info(
            "sharing: %s, %d replica(s), %d inference thread(s), %d intra-op thread(s) each, "
            "budget %d (%s)",
            plan.strategy,
            plan.replicas,
            plan.inference_threads,
            plan.threads_per_replica,
            plan.budget,
            plan.reason,
        )
        device = "cuda" if gpus else "cpu"
        choice = choose_variant(
            model.path,
            store,
            backend=settings.backend,
            dtype=settings.dtype,
            threads=plan.threads_per_replica,
            device=device,
        )
        gate = f"; accuracy gate: {choice.gate.describe()}" if choice.gate else ""
        logger.info("backend: %s, %s%s", choice.variant, choice.reason, gate)
        return cls(model, store, plan, device, choice)
