"""The model store against a local fake hub: single-flight across real processes,
atomic publish, recovery from cut and killed downloads, verification, offline."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedloom.errors import ModelFetchFailed, ModelNotFound
from embedloom.store import ModelStore, resolve_model
from tests.fake_hub import FakeHub

REPO = "acme/minilm"
WEIGHTS = "model.safetensors"

# A child process that resolves REPO through the store, as `embedloom serve`
# does, loads the weights it found and prints where they were and their digest.
_RESOLVE_AND_LOAD = """
import hashlib, json, os, sys
from embedloom.config import Settings
from embedloom.store import ModelStore, resolve_model
from safetensors.numpy import load_file

settings = Settings.from_env(os.environ)
model = resolve_model(sys.argv[1], store=ModelStore.for_settings(settings))
tensors = load_file(str(model.path / "model.safetensors"))
digest = hashlib.sha256()
for name in sorted(tensors):
    digest.update(name.encode())
    digest.update(tensors[name].tobytes())
print(json.dumps({"path": str(model.path), "weights": digest.hexdigest()}))
"""


@pytest.fixture
def hub(model_dir: Path) -> Iterator[FakeHub]:
    with FakeHub({REPO: model_dir}) as fake:
        yield fake


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite runs with HF_HUB_OFFLINE=1; these tests talk to the fake hub only."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def child_env(hub: FakeHub, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": hub.url,
        "EMBEDLOOM_HOME": str(home),
        "HF_HOME": str(home / "hf"),  # an empty HF cache: the store must fetch
    }


def resolver(hub: FakeHub, home: Path, reference: str = REPO) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _RESOLVE_AND_LOAD, reference],
        env=child_env(hub, home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def snapshots(home: Path) -> list[Path]:
    return sorted((home / "models" / "acme--minilm" / "snapshots").glob("*"))


def partials(home: Path) -> list[Path]:
    return sorted((home / "models" / "acme--minilm").glob(".partial-*"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.usefixtures("online")
def test_fetch_publishes_a_complete_verified_snapshot(
    hub: FakeHub, tmp_path: Path, model_dir: Path
) -> None:
    store = ModelStore(tmp_path, endpoint=hub.url)
    model = resolve_model(REPO, store=store, hf_cache_dir=tmp_path / "hf")

    assert model.id == REPO
    assert model.path == tmp_path / "models" / "acme--minilm" / "snapshots" / hub.commit(REPO)
    assert sha256(model.path / WEIGHTS) == sha256(model_dir / WEIGHTS)
    assert (model.path / "1_Pooling" / "config.json").is_file()
    assert not (model.path / ".gitattributes").exists()  # not needed to load
    assert partials(tmp_path) == []
    [stored] = store.list()
    assert (stored.repo_id, stored.commit, stored.revisions) == (REPO, hub.commit(REPO), ("main",))
    assert stored.size_bytes > 90_000_000

    # Found again without the hub: by revision, by commit, and offline.
    before = hub.downloads()
    assert resolve_model(f"{REPO}@main", store=store).path == model.path
    assert resolve_model(f"{REPO}@{hub.commit(REPO)}", store=store).path == model.path
    assert ModelStore(tmp_path, offline=True).find(REPO) == model.path
    assert hub.downloads() == before


@pytest.mark.usefixtures("online")
def test_unknown_repo_or_revision_is_model_not_found_naming_the_hub(
    hub: FakeHub, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path, endpoint=hub.url)
    for reference in ("acme/absent", f"{REPO}@no-such-branch"):
        with pytest.raises(ModelNotFound) as missing:
            resolve_model(reference, store=store, hf_cache_dir=tmp_path / "hf")
        assert "model store" in str(missing.value)
        assert hub.url in str(missing.value)


@pytest.mark.usefixtures("online")
def test_unreachable_hub_is_a_clear_fetch_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    store = ModelStore(tmp_path, endpoint=f"http://127.0.0.1:{port}")
    with pytest.raises(ModelFetchFailed, match="could not fetch 'acme/minilm'"):
        store.fetch(REPO)
    assert snapshots(tmp_path) == []


@pytest.mark.usefixtures("online")
def test_a_corrupt_file_is_refused_and_nothing_is_published(hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path, endpoint=hub.url)
    hub.behaviour.corrupt.add(WEIGHTS)
    with pytest.raises(ModelFetchFailed, match="SHA-256"):
        store.fetch(REPO)
    assert snapshots(tmp_path) == []
    assert partials(tmp_path) == []

    hub.behaviour.corrupt.clear()
    assert store.fetch(REPO) == snapshots(tmp_path)[0]


@pytest.mark.usefixtures("online")
def test_a_download_cut_half_way_leaves_nothing_and_the_next_fetch_succeeds(
    hub: FakeHub, tmp_path: Path, model_dir: Path
) -> None:
    store = ModelStore(tmp_path, endpoint=hub.url)
    hub.behaviour.cut.add(WEIGHTS)
    hub.behaviour.release_cut.set()  # drop the connection as soon as half is sent
    with pytest.raises(ModelFetchFailed):
        store.fetch(REPO)
    assert hub.behaviour.cut_reached.is_set()
    assert snapshots(tmp_path) == []
    assert partials(tmp_path) == []

    hub.behaviour.cut.clear()
    path = store.fetch(REPO)
    assert sha256(path / WEIGHTS) == sha256(model_dir / WEIGHTS)


def test_a_fetcher_killed_mid_download_is_recovered_from_by_the_next_start(
    hub: FakeHub, tmp_path: Path, model_dir: Path
) -> None:
    hub.behaviour.cut.add(WEIGHTS)  # hold the download half-way until released
    doomed = resolver(hub, tmp_path)
    assert hub.behaviour.cut_reached.wait(timeout=120), "the download never started"
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate(timeout=30)
    assert doomed.returncode == -signal.SIGKILL
    hub.behaviour.cut.clear()
    hub.behaviour.release_cut.set()
    assert snapshots(tmp_path) == []  # nothing a later start could mistake for a model
    assert len(partials(tmp_path)) == 1  # the dead fetch's leftovers, never read

    fresh = resolver(hub, tmp_path)
    out, err = fresh.communicate(timeout=120)
    assert fresh.returncode == 0, err
    path = Path(json.loads(out)["path"])
    assert sha256(path / WEIGHTS) == sha256(model_dir / WEIGHTS)
    assert partials(tmp_path) == []  # cleaned up by the next lock holder


def test_pull_then_models_then_offline_serve_finds_it(hub: FakeHub, tmp_path: Path) -> None:
    embedloom = str(Path(sys.executable).with_name("embedloom"))
    env = child_env(hub, tmp_path)
    pulled = subprocess.run(
        [embedloom, "pull", REPO], env=env, capture_output=True, text=True, timeout=120
    )
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == str(snapshots(tmp_path)[0])

    listed = subprocess.run([embedloom, "models"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0
    assert REPO in listed.stdout
    assert hub.commit(REPO)[:12] in listed.stdout
    assert "MB" in listed.stdout

    # Offline, the stored model is enough: the doctor-free way to check is to resolve.
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    child = subprocess.run(
        [sys.executable, "-c", _RESOLVE_AND_LOAD, REPO],
        env=offline,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr


def test_offline_with_a_missing_model_exits_non_zero_naming_every_place(tmp_path: Path) -> None:
    embedloom = str(Path(sys.executable).with_name("embedloom"))
    result = subprocess.run(
        [embedloom, "serve", "--offline", "--home", str(tmp_path), "--model", "acme/absent"],
        env={**os.environ, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    message = result.stderr
    assert "'acme/absent' not found" in message
    for place in ("packaged models", "local directory", "model store", "Hugging Face cache"):
        assert place in message
    assert "offline" in message
    assert "Traceback" not in message
