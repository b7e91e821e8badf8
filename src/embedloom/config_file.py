"""The config file: TOML with the flags' names, a ``[models.NAME]`` table per model.

    threads = 2
    keep-alive = 600

    [models.small]
    model = "all-MiniLM-L6-v2"
    aliases = ["text-embedding-ada-002"]
    max-batch-tokens = 4096

    [models.docs]
    model = "/srv/models/bge-small-en"
    backend = "onnx"

Top-level keys are any setting (``--max-batch-tokens`` or ``max_batch_tokens``);
a model table takes ``model`` (what ``--model`` takes), ``aliases`` and the
per-model settings (``config.PER_MODEL_SETTINGS``). The tables' order is the
models' order: the first is the default. ``EMBEDLOOM_*`` variables and flags
win over the file. A mistake is one ``SettingsError`` naming the file and line.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from embedloom.config import PER_MODEL_SETTINGS, SettingsError, SettingSpec, setting_specs

__all__ = ["read_config_file"]


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's settings as ``Settings`` field values (``model`` and
    ``model_settings`` from its model tables)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"config {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"config {path}: not UTF-8 text ({exc.reason})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config {path}: not valid TOML: {exc}") from exc
    return _Reader(path, text).values(data)


class _Reader:
    def __init__(self, path: Path, text: str) -> None:
        self._path = path
        self._lines = text.splitlines()
        self._specs = {spec.name: spec for spec in setting_specs()}

    def values(self, data: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        tables = data.pop("models", None)
        for key, raw in data.items():
            name = self._setting_name(key, None)
            values[name] = self._convert(self._specs[name], raw, key, None)
        if tables is None:
            return values
        if not isinstance(tables, dict) or not tables:
            raise self._error("models", None, "expected [models.NAME] tables, one per model")
        if "model" in values:
            raise self._error(
                "model", None, "give the models either as 'model' or as [models.NAME] tables"
            )
        refs: list[str] = []
        per_model: list[tuple[str, tuple[tuple[str, Any], ...]]] = []
        for model_name, table in tables.items():
            where = f"models.{model_name}"
            if not isinstance(table, dict):
                raise self._error(model_name, "models", "expected a table: [models.NAME]")
            if "=" in model_name or not model_name.strip():
                raise self._error(model_name, "models", "a model's name has no '=' in it")
            ref = table.get("model")
            if not isinstance(ref, str) or not ref.strip():
                raise self._error(
                    "model", where, 'expected the model to serve: model = "REF"', header=True
                )
            refs.append(f"{model_name}={ref}")
            own: list[tuple[str, Any]] = []
            for key, raw in table.items():
                if key == "model":
                    continue
                if key == "aliases":
                    if not isinstance(raw, list) or not all(
                        isinstance(a, str) and a.strip() for a in raw
                    ):
                        raise self._error(key, where, "expected a list of names")
                    own.append(("aliases", tuple(a.strip() for a in raw)))
                    continue
                name = self._setting_name(key, where)
                if name not in PER_MODEL_SETTINGS:
                    raise self._error(
                        key,
                        where,
                        "not a per-model setting; set it at the top of the file (per-model "
                        f"settings: {', '.join(PER_MODEL_SETTINGS)}, model, aliases)",
                    )
                own.append((name, self._convert(self._specs[name], raw, key, where)))
            per_model.append((model_name, tuple(own)))
        values["model"] = tuple(refs)
        values["model_settings"] = tuple(per_model)
        return values

    def _setting_name(self, key: str, table: str | None) -> str:
        name = key.replace("-", "_")
        if name not in self._specs:
            raise self._error(key, table, "no such setting (the names are the flags' names)")
        return name

    def _convert(self, spec: SettingSpec, raw: Any, key: str, table: str | None) -> Any:
        kind = spec.kind
        if kind is tuple:
            items = [raw] if isinstance(raw, str) else raw
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise self._error(key, table, "expected a string or a list of strings")
            return tuple(items)
        if kind is bool:
            ok = isinstance(raw, bool)
        elif kind is int:
            ok = isinstance(raw, int) and not isinstance(raw, bool)
        elif kind is float:
            ok = isinstance(raw, int | float) and not isinstance(raw, bool)
            raw = float(raw) if ok else raw
        else:
            ok = isinstance(raw, str)
        if not ok:
            raise self._error(key, table, f"expected {kind.__name__}, got {raw!r}")
        if spec.choices is not None and raw not in spec.choices:
            raise self._error(key, table, f"expected one of {', '.join(spec.choices)}, got {raw!r}")
        return raw

    def _error(
        self, key: str, table: str | None, problem: str, *, header: bool = False
    ) -> SettingsError:
        line = self._line_of(key, table, header=header)
        where = f"{self._path}:{line}" if line else str(self._path)
        name = f"{table}.{key}" if table and not header else table or key
        return SettingsError(f"config {where}: {name}: {problem}")

    def _line_of(self, key: str, table: str | None, *, header: bool) -> int | None:
        """The line where ``key`` is set in ``table`` (or the table's header)."""
        current: str | None = None
        assignment = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for number, line in enumerate(self._lines, start=1):
            stripped = line.strip()
            if stripped.startswith("["):
                current = stripped.strip("[] ").replace(" ", "")
                if header and current == table:
                    return number
                if table == "models" and current == f"models.{key}":
                    return number
                continue
            if current == table and assignment.match(line):
                return number
        return None
