"""Model references resolve to local directories, offline (the hub: test_model_store)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from embedloom.errors import ModelNotFound
from embedloom.store import DEFAULT_MODEL_ID, ModelStore, resolve_model


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
