"""Shared fixtures. Real-model fixtures are session-scoped: loading torch and the
model costs seconds, and every test that needs them reads, never mutates."""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pytest

from tests.helpers import (
    GUARDED_BODY_LIMIT,
    GUARDED_BODY_TIMEOUT,
    GUARDED_KEYS,
    ServerProcess,
    build_cross_encoder,
    build_sparse_encoder,
    build_tiny_bert,
    sample_texts,
)

if TYPE_CHECKING:
    from embedloom.store import ModelStore

# Nothing in the suite may reach the Hugging Face hub.
os.environ["HF_HUB_OFFLINE"] = "1"
# Nor write outside temporary directories: the model store (exports, trial
# records) of this session lives in one, removed at the end (the servers the
# tests start inherit the variable). A developer's own EMBEDLOOM_HOME is not used.
_STORE_HOME = tempfile.mkdtemp(prefix="embedloom-test-home-")
os.environ["EMBEDLOOM_HOME"] = _STORE_HOME
# The libraries' own caches and settings too (onnxruntime's device id, the HF
# cache, Chromium's dconf): the XDG directories they follow, in the same place.
os.environ["XDG_CACHE_HOME"] = os.path.join(_STORE_HOME, "xdg-cache")
os.environ["XDG_CONFIG_HOME"] = os.path.join(_STORE_HOME, "xdg-config")
# The suite checks vectors against sentence-transformers to 1e-5, which only the
# fp32 torch reference meets; the other variants have tests of their own
# (test_variants.py) that ask for them by name.
os.environ.setdefault("EMBEDLOOM_BACKEND", "torch")
os.environ.setdefault("EMBEDLOOM_DTYPE", "fp32")


@pytest.fixture(scope="session", autouse=True)
def _remove_the_store_home() -> Iterator[None]:
    yield
    shutil.rmtree(_STORE_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from embedloom.store import resolve_model

    return resolve_model("all-MiniLM-L6-v2").path


@pytest.fixture(scope="session")
def variants_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """One store for the variant tests: each export and conversion of the default
    model (the int8 OpenVINO model takes half a minute) is built once per run."""
    from embedloom.store import ModelStore

    return ModelStore(tmp_path_factory.mktemp("variants-home"), offline=True)


@pytest.fixture(scope="session")
def reference_model(model_dir: Path) -> object:
    """sentence-transformers itself: the source of truth for vectors."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu")


@pytest.fixture(scope="session")
def reference_encode(reference_model: object) -> object:
    """sentence-transformers' vectors for ``texts``. Seconds of blocking work: an async
    test hands it to ``run_in_thread``; called on the loop, it fails at once."""
    from embedloom.offload import refuse_on_event_loop

    def encode(texts: list[str]) -> npt.NDArray[np.float32]:
        refuse_on_event_loop("reference_encode")
        return np.asarray(reference_model.encode(texts, batch_size=32))  # type: ignore[attr-defined]

    return encode


@pytest.fixture(scope="session")
def second_model_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, different embedding model no package ships (``build_tiny_bert``)."""
    return build_tiny_bert(model_dir, tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def reranker_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cross-encoder with one output (``build_cross_encoder``)."""
    return build_cross_encoder(model_dir, tmp_path_factory.mktemp("models") / "reranker")


CLASSIFIER_LABELS = ("negative", "neutral", "positive")


@pytest.fixture(scope="session")
def classifier_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cross-encoder with three labels (``CLASSIFIER_LABELS``)."""
    return build_cross_encoder(
        model_dir,
        tmp_path_factory.mktemp("models") / "classifier",
        labels=CLASSIFIER_LABELS,
        seed=12,
    )


@pytest.fixture(scope="session")
def splade_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sparse (SPLADE) encoder (``build_sparse_encoder``)."""
    return build_sparse_encoder(model_dir, tmp_path_factory.mktemp("models") / "splade")


PROMPTS = {"query": "query: ", "document": "passage: "}


@pytest.fixture(scope="session")
def prompted_model_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 with named prompts (``PROMPTS``) in its sentence-transformers
    configuration, as e5 or bge models carry them; its files are links to the real one's."""
    target = tmp_path_factory.mktemp("models") / "prompted-minilm"
    target.mkdir()
    for item in model_dir.iterdir():
        if item.name != "config_sentence_transformers.json":
            (target / item.name).symlink_to(item)
    config = json.loads((model_dir / "config_sentence_transformers.json").read_text())
    config["prompts"] = PROMPTS
    (target / "config_sentence_transformers.json").write_text(json.dumps(config))
    return target


@pytest.fixture(scope="session")
def second_reference_encode(second_model_dir: Path) -> object:
    """sentence-transformers' vectors from the second model."""
    from sentence_transformers import SentenceTransformer

    from embedloom.offload import refuse_on_event_loop

    model = SentenceTransformer(str(second_model_dir), device="cpu")

    def encode(texts: list[str]) -> npt.NDArray[np.float32]:
        refuse_on_event_loop("second_reference_encode")
        return np.asarray(model.encode(texts, batch_size=32))

    return encode


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return sample_texts(64)


@pytest.fixture(scope="session")
def server(
    prompted_model_dir: Path,
    reranker_dir: Path,
    classifier_dir: Path,
    splade_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    """One real ``embedloom serve`` on loopback for the read-only API tests: the default
    model, the same model with named prompts as ``prompted``, and a model of each
    other task: ``reranker``, ``classifier`` and ``splade`` (torch fp32: their
    variant trial is tested on its own)."""
    config = tmp_path_factory.mktemp("config") / "models.toml"
    tables = [
        '[models."all-MiniLM-L6-v2"]\nmodel = "all-MiniLM-L6-v2"',
        f'[models.prompted]\nmodel = "{prompted_model_dir}"',
    ]
    for name, path in (
        ("reranker", reranker_dir),
        ("classifier", classifier_dir),
        ("splade", splade_dir),
    ):
        tables.append(f'[models.{name}]\nmodel = "{path}"\nbackend = "torch"\ndtype = "fp32"')
    config.write_text("\n\n".join(tables) + "\n")
    # The API tests fire bursts (up to 200 requests at once) to check answers, not
    # admission: on a busy machine the default 0.5 s target would refuse some of
    # them. Admission by wait is tested in test_fairness and test_server_load.
    with ServerProcess.start(
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "--config",
        str(config),
        "--max-queue-wait",
        "60",
    ) as process:
        yield process


class _SlowCallbacks(logging.Handler):
    """Collects asyncio debug mode's 'Executing <…> took N seconds' reports."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        took = _TOOK.search(message)
        # Steps of client libraries the tests drive (httpx's first request, say)
        # are not ours to judge: only our code and the tests' own coroutines count.
        ours = "/embedloom/" in message or "/tests/" in message
        if took and ours and float(took.group(1)) > _MAX_LOOP_STEP_SECONDS:
            self.reports.append(message)


_TOOK = re.compile(r"took (\d+\.\d+) seconds")
# asyncio's own threshold is 0.1 s; this shared 2-core machine stalls whole
# processes now and then, so only a clearly blocking step fails a test.
_MAX_LOOP_STEP_SECONDS = 0.5


@pytest.fixture(scope="session")
def guarded() -> Iterator[ServerProcess]:
    """A real server with API keys, a small body limit and a short body timeout."""
    with ServerProcess.start(
        "--api-key",
        GUARDED_KEYS[0],
        "--api-key",
        GUARDED_KEYS[1],
        "--max-body-bytes",
        str(GUARDED_BODY_LIMIT),
        "--body-timeout",
        str(GUARDED_BODY_TIMEOUT),
    ) as process:
        yield process


@pytest.fixture(autouse=True)
def fail_on_blocking_the_event_loop() -> Iterator[None]:
    # A full collection over everything torch and transformers allocate at import
    # pauses the process for a few hundred ms, in whatever step it lands; objects
    # that exist before the test are frozen out of the collector's way.
    gc.freeze()
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if handler.reports:
        pytest.fail("the event loop was blocked:\n" + "\n".join(handler.reports))


# The files that take longest (tens of seconds each, mostly starting processes):
# first, so that the two pytest-xdist workers of scripts/test, which take tests
# one by one in this order, do not end with one of them running a long test alone.
# (Keeping each file whole on one worker, so that module fixtures start once,
# measured slower: 680 s against 636 s, the workers then finishing far apart.)
_LONGEST_FILES = (
    # One xdist group (two Ray clusters at once thrash two cores): first.
    "test_ray_job.py",
    "test_batch_job.py",
    "test_openvino.py",
    "test_variants.py",
    "test_failures.py",
    "test_ray.py",
    "test_workers.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def longest_first(item: pytest.Item) -> int:
        name = item.path.name
        return _LONGEST_FILES.index(name) if name in _LONGEST_FILES else len(_LONGEST_FILES)

    items.sort(key=longest_first)  # stable: each file's own order is kept
