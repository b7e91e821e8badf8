"""Reading what a model directory declares: its JSON configuration files and its
sentence-transformers module list. A file that is missing or not a JSON object
reads as empty: a model need not have every file."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["config_json", "module_list"]


def config_json(path: Path) -> dict[str, object]:
    """The JSON object in ``path`` (empty when there is none)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def module_list(model_dir: Path) -> list[dict[str, object]]:
    """The entries of ``modules.json`` (empty for a plain Hugging Face directory)."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
    except (OSError, ValueError):
        return []
    return [m for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []
