"""What ``tune`` tries on this machine, in the order it matters, and the config file it
writes (the format ``serve --config`` reads: ``config_file``).

- variant: the backend/dtype pairs that passed the accuracy gate in this
  machine's variant trial (the trial ``serve`` runs; kept in the store), fastest
  first, beside ``auto`` (the trial's own pick);
- sharing: one model with every thread, or replicas of fewer threads (the
  plans ``auto`` does not already take on this many cores);
- workers: processes, each with its share of the threads;
- the batcher's token budget and its per-call overhead;
- the queue-wait target of admission.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from embedloom.config import PER_MODEL_SETTINGS, Settings
from embedloom.sharing import plan_sharing
from embedloom.tune.search import Knob, Option
from embedloom.variants.choice import Choice

__all__ = ["config_text", "machine_knobs", "variant_options"]

# Variants beside auto's pick worth a trial each: the trial's next fastest ones.
_MORE_VARIANTS = 2


def variant_options(choice: Choice) -> list[Option]:
    """``auto`` (the trial's pick), then the other variants that passed the gate,
    fastest first."""
    passed = sorted(
        (c for c in choice.candidates if c.refused is None and c.variant != choice.variant),
        key=lambda c: -(c.sentences_per_second or 0.0),
    )
    return [
        Option(f"auto ({choice.variant})"),
        *(
            Option(str(c.variant), {"backend": c.variant.backend, "dtype": c.variant.dtype})
            for c in passed[:_MORE_VARIANTS]
        ),
    ]


def machine_knobs(
    settings: Settings, *, cores: int, variants: Sequence[Option], target: str
) -> list[Knob]:
    auto = plan_sharing(settings, cores=cores, gpus=0)
    sharing = [Option(f"auto ({auto.strategy} {auto.replicas}×{auto.threads_per_replica})")]
    if auto.strategy != "dedicated":
        sharing.append(Option(f"dedicated 1×{cores}", {"sharing": "dedicated"}))
    for replicas in sorted({2, cores}):
        if 1 < replicas <= cores and not (
            auto.strategy == "replicas" and auto.replicas == replicas
        ):
            sharing.append(
                Option(
                    f"replicas {replicas}×{cores // replicas}",
                    {"sharing": "replicas", "replicas": replicas},
                )
            )
    workers = [Option("1")] + ([Option("2", {"workers": 2})] if cores >= 2 else [])
    tokens = settings.max_batch_tokens
    overhead = settings.batch_overhead_tokens
    wait = settings.max_queue_wait
    # Latency: a shorter wait target refuses sooner and keeps the admitted fast;
    # throughput: a longer one refuses less of a closed loop's bursts.
    waits = (wait / 2, wait * 4) if target == "latency" else (wait * 4,)
    knobs = [
        Knob("variant", tuple(variants)),
        Knob("sharing", tuple(sharing)),
        Knob("workers", tuple(workers)),
        Knob(
            "max-batch-tokens",
            (
                Option(str(tokens)),
                *(Option(str(t), {"max_batch_tokens": t}) for t in (tokens // 2, tokens * 2)),
            ),
        ),
        Knob(
            "batch-overhead-tokens",
            (
                Option(str(overhead)),
                *(
                    Option(str(o), {"batch_overhead_tokens": o})
                    for o in (overhead // 4, overhead * 4)
                ),
            ),
        ),
        Knob(
            "max-queue-wait",
            (Option(f"{wait:g}"), *(Option(f"{w:g}", {"max_queue_wait": w}) for w in waits)),
        ),
    ]
    return [knob for knob in knobs if len(knob.options) > 1]


def config_text(settings: Settings, tuned: Mapping[str, Any], *, header: Sequence[str] = ()) -> str:
    """A config file serving ``settings``' first model with the ``tuned`` settings:
    the server's at the top, the model's in its ``[models.NAME]`` table."""
    spec = settings.models[0]
    lines = [f"# {line}" for line in header]
    top = {k: v for k, v in tuned.items() if k not in PER_MODEL_SETTINGS}
    own = {k: v for k, v in tuned.items() if k in PER_MODEL_SETTINGS}
    lines += [f"{_key(k)} = {_value(v)}" for k, v in sorted(top.items())]
    if top:
        lines.append("")
    lines.append(f"[models.{_value(spec.name)}]")
    lines.append(f"model = {_value(spec.ref)}")
    lines += [f"{_key(k)} = {_value(v)}" for k, v in sorted(own.items())]
    return "\n".join(lines) + "\n"


def _key(name: str) -> str:
    return name.replace("_", "-")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string for every text we write
