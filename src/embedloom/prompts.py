"""A model's named prompts, as sentence-transformers keeps them (and its pooling,
read from the same Pooling configuration).

``config_sentence_transformers.json`` may hold ``prompts`` (``{"query": "query: "}``)
and a ``default_prompt_name``; ``encode(..., prompt_name=...)`` puts the prompt's
text before each input and tokenises the two together, so the prompt's tokens
count toward the model's maximum length. embedloom does the same (the prompt is
never cut: see ``TextEncoder``), so vectors equal ``encode``'s.

A Pooling module with ``include_prompt: false`` leaves the prompt's tokens out of
the mean; embedloom's exported graphs pool every token, so such a model is
served without prompts rather than with vectors that differ from ``encode``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from embedloom.backends.base import TokenizeOptions
from embedloom.errors import InvalidInput
from embedloom.model_files import config_json, module_list

__all__ = ["ModelPrompts", "pooling_mode"]

# sentence-transformers' Pooling flags → TEI's names for the pooling (its /info).
_POOLING_NAMES = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "last_token"),
)


@dataclass(frozen=True, slots=True)
class ModelPrompts:
    """The prompts one model offers, and the one used when a request names none."""

    prompts: Mapping[str, str] = field(default_factory=dict)
    default_name: str | None = None
    # Why prompts cannot be used with this model, when they cannot.
    unusable: str | None = None

    @classmethod
    def read(cls, model_dir: Path) -> ModelPrompts:
        """The prompts of the sentence-transformers model in ``model_dir`` (none for a
        plain transformers directory)."""
        config = config_json(model_dir / "config_sentence_transformers.json")
        listed = config.get("prompts")
        prompts = {str(k): str(v) for k, v in listed.items()} if isinstance(listed, dict) else {}
        default = config.get("default_prompt_name") or None
        unusable = None
        if prompts and not _pooling_includes_prompt(model_dir):
            unusable = (
                "its pooling leaves the prompt's tokens out (include_prompt: false), "
                "which embedloom does not implement"
            )
        return cls(prompts, str(default) if default else None, unusable)

    def with_default(self, name: str | None, text: str | None) -> ModelPrompts:
        """These prompts with the server's default for the model: a name among them,
        or a text of its own (kept under the name ``default``)."""
        if text:
            return ModelPrompts({**self.prompts, "default": text}, "default", self.unusable)
        if name:
            if name not in self.prompts:
                raise InvalidInput(
                    f"default_prompt_name {name!r} is not one of the model's prompts "
                    f"({self.listed()})",
                    param="default_prompt_name",
                )
            return ModelPrompts(self.prompts, name, self.unusable)
        return self

    def text_for(self, name: str | None, text: str | None = None) -> str:
        """The prompt text a request gets: its own ``text``, the prompt named ``name``,
        or the default (empty when there is none). ``InvalidInput`` lists the
        model's prompts for a name it does not have."""
        if text is not None and name is not None:
            raise InvalidInput("give prompt_name or prompt, not both", param="prompt_name")
        if text is None and name is not None and name not in self.prompts:
            raise InvalidInput(
                f"prompt_name {name!r} is not one of the model's prompts ({self.listed()})",
                param="prompt_name",
            )
        chosen = text if text is not None else self.prompts.get(name or self.default_name or "")
        if chosen and self.unusable is not None:
            raise InvalidInput(f"this model cannot take a prompt: {self.unusable}", param="prompt")
        return chosen or ""

    def tokenize_options(
        self,
        *,
        texts: bool,
        name: str | None,
        text: str | None,
        direction: str,
        max_tokens: int | None = None,
    ) -> TokenizeOptions:
        """How a request's inputs are tokenised: its prompt (``text_for``; token ids
        take none unless asked, being the model's input as given), which end an
        over-long input loses, and a cut below the model's maximum."""
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise InvalidInput("max_tokens must be a positive integer", param="max_tokens")
        if direction not in ("right", "left"):
            raise InvalidInput(
                f"truncation_direction must be right or left, not {direction!r}",
                param="truncation_direction",
            )
        prompt = self.text_for(name, text) if texts or name is not None or text is not None else ""
        return TokenizeOptions(prompt=prompt, left=direction == "left", max_tokens=max_tokens)

    def listed(self) -> str:
        return ", ".join(sorted(self.prompts)) or "it has none"


def pooling_mode(model_dir: Path) -> str | None:
    """The model's pooling in TEI's words (``mean``, ``cls``, …), if it declares one."""
    config = _pooling_config(model_dir)
    names = [name for flag, name in _POOLING_NAMES if config.get(flag)]
    return "+".join(names) or None


def _pooling_includes_prompt(model_dir: Path) -> bool:
    return bool(_pooling_config(model_dir).get("include_prompt", True))


def _pooling_config(model_dir: Path) -> dict[str, object]:
    for module in module_list(model_dir):
        if str(module.get("type", "")).endswith("Pooling"):
            return config_json(model_dir / str(module.get("path", "")) / "config.json")
    return {}
