"""One served model as the settings give it: ``NAME=REF`` or a bare ``REF``, and which
settings may differ from model to model (see ``docs/many-models.md``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["PER_MODEL_SETTINGS", "ModelSpec"]


# What may differ between the models one server serves (a ``[models.NAME]`` table
# of the config file sets them); everything else is the server's, shared by all.
PER_MODEL_SETTINGS = (
    "backend",
    "dtype",
    "max_batch_tokens",
    "max_batch_size",
    "batch_overhead_tokens",
    "max_queued_inputs",
    "max_queue_wait",
    "sharing",
    "replicas",
    "inference_timeout",
    "keep_alive",
    "default_prompt_name",
    "default_prompt",
)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One served model: its name, what ``--model`` takes for it, the other names it
    answers to, and its own values of ``PER_MODEL_SETTINGS``."""

    name: str
    ref: str
    aliases: tuple[str, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``NAME=REF`` or a bare ``REF``, named after it (a directory by its name, a
        hub id without its revision)."""
        name, sep, ref = text.strip().partition("=")
        if not sep:
            ref = name
            name = default_name(ref)
        name, ref = name.strip(), ref.strip()
        if not name or not ref:
            from embedloom.config import SettingsError

            raise SettingsError(f"model: expected NAME=REF or REF, got {text!r}")
        return cls(name, ref)


def default_name(ref: str) -> str:
    """A bare reference's served name: a directory's name, a hub id without its revision."""
    local = os.path.expanduser(ref)
    if os.path.isdir(local):
        return os.path.basename(os.path.normpath(os.path.abspath(local)))
    return ref.partition("@")[0]
