"""Model references resolve to local directories, offline (the hub: test_model_store);
derived entries are built once, and rebuilt when damaged."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from embedloom.errors import ModelNotFound
from embedloom.store import DEFAULT_MODEL_ID, ModelStore, model_key, resolve_model


@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"])
def test_packaged_default_by_either_name(name: str) -> None:
    model = resolve_model(name)
    assert model.id == DEFAULT_MODEL_ID
    assert (model.path / "model.safetensors").is_file()
    assert model.answers_to("sentence-transformers/all-MiniLM-L6-v2")


def test_local_directory(tmp_path: Path, model_dir: Path) -> None:
    copy = tmp_path / "my-minilm"
    shutil.copytree(model_dir, copy)
    model = resolve_model(str(copy))
    assert model.path == copy.resolve()
    assert model.id == "my-minilm"


def test_repo_id_from_the_local_hugging_face_cache(tmp_path: Path, model_dir: Path) -> None:
    snapshot = tmp_path / "models--acme--minilm" / "snapshots" / "0123abcd"
    shutil.copytree(model_dir, snapshot)
    (tmp_path / "models--acme--minilm" / "refs").mkdir()
    (tmp_path / "models--acme--minilm" / "refs" / "main").write_text("0123abcd")
    model = resolve_model("acme/minilm", hf_cache_dir=tmp_path)
    assert model.id == "acme/minilm"
    assert model.path == snapshot


def test_unknown_model_names_every_place_looked(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "home", offline=True)
    with pytest.raises(ModelNotFound) as missing:
        resolve_model("acme/absent", store=store, hf_cache_dir=tmp_path)
    message = str(missing.value)
    assert "acme/absent" in message
    assert "packaged models" in message
    assert "local directory" in message
    assert f"model store {tmp_path / 'home' / 'models'}" in message
    assert "Hugging Face cache" in message
    assert "offline" in message


def test_directory_without_a_model_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        resolve_model(str(tmp_path))


# -- derived entries ------------------------------------------------------------


def _writer(calls: list[Path], text: str = "built") -> Callable[[Path], None]:
    def build(into: Path) -> None:
        calls.append(into)
        (into / "artefact.txt").write_text(text)

    return build


def test_a_derived_entry_is_built_once_and_then_read(tmp_path: Path, model_dir: Path) -> None:
    store, calls = ModelStore(tmp_path, offline=True), []
    first = store.derived(model_dir, "thing", _writer(calls))
    again = store.derived(model_dir, "thing", _writer(calls))
    assert first == again
    assert len(calls) == 1
    assert (first / "artefact.txt").read_text() == "built"
    assert json.loads((first / "MANIFEST.json").read_text())["files"]["artefact.txt"]["size"] == 5


def test_a_failed_build_leaves_nothing_and_the_next_call_builds(
    tmp_path: Path, model_dir: Path
) -> None:
    store = ModelStore(tmp_path, offline=True)

    def broken(into: Path) -> None:
        (into / "half.txt").write_text("half")
        raise RuntimeError("export crashed")

    with pytest.raises(RuntimeError, match="export crashed"):
        store.derived(model_dir, "thing", broken)
    assert not [p for p in (tmp_path / "derived").rglob("*") if p.is_file()]
    calls: list[Path] = []
    entry = store.derived(model_dir, "thing", _writer(calls))
    assert len(calls) == 1
    assert not list(entry.parent.glob(".partial-*"))


@pytest.mark.parametrize("damage", ["same-size edit", "manifest removed", "file removed"])
def test_a_damaged_derived_entry_is_rebuilt(
    tmp_path: Path, model_dir: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store, calls = ModelStore(tmp_path, offline=True), []
    entry = store.derived(model_dir, "thing", _writer(calls))
    if damage == "same-size edit":
        (entry / "artefact.txt").write_text("BUILT")
    elif damage == "manifest removed":
        (entry / "MANIFEST.json").unlink()
    else:
        (entry / "artefact.txt").unlink()
    with caplog.at_level("WARNING", logger="embedloom.store"):
        rebuilt = store.derived(model_dir, "thing", _writer(calls))
    assert rebuilt == entry
    assert len(calls) == 2
    assert (rebuilt / "artefact.txt").read_text() == "built"
    assert f"rebuilding {entry}" in caplog.text


def test_a_changed_model_gets_entries_of_its_own(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    before = model_key(model)
    (model / "config.json").write_text('{"changed": true}')
    assert model_key(model) != before
