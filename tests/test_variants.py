"""The fast variants on the real model: each against sentence-transformers fp32
under the accuracy gate, the ONNX export cache across real processes, and the
choice as the real server makes and reports it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from embedloom.backends.onnx import MODEL_FILE
from embedloom.errors import BackendError
from embedloom.store import ModelStore
from embedloom.variants.catalog import (
    REFERENCE,
    VARIANTS,
    Variant,
    onnx_export,
    open_variant,
    unsupported_reason,
)
from embedloom.variants.choice import choose_variant
from embedloom.variants.gate import calibration_texts, embed_texts, measure
from tests.helpers import ServerProcess, run_at_once

ONNX_FP32 = Variant("onnx", "fp32")

# A child process that asks the store for the ONNX export, as a starting server
# does, and reports where it found it.
_EXPORT = """
import json, logging, sys
from pathlib import Path
from embedloom.variants.catalog import Variant, onnx_export
from embedloom.store import ModelStore

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
path = onnx_export(Variant("onnx", "fp32"), Path(sys.argv[1]), ModelStore(Path(sys.argv[2])))
print(json.dumps({"path": str(path)}))
"""


@pytest.fixture(scope="module")
def store(variants_store: ModelStore) -> ModelStore:
    return variants_store


@pytest.fixture(scope="module")
def reference_vectors(reference_model: Any) -> Any:
    return reference_model.encode(calibration_texts(), batch_size=32)


def skip_unless_supported(variant: Variant) -> None:
    if (reason := unsupported_reason(variant, "cpu")) is not None:
        pytest.skip(f"{variant} cannot run on this machine: {reason}")


@pytest.mark.timeout(600)  # openvino/int8, when this file runs alone, is built here
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != REFERENCE], ids=str)
def test_each_variant_against_sentence_transformers_fp32(
    variant: Variant, model_dir: Path, store: ModelStore, reference_vectors: Any
) -> None:
    skip_unless_supported(variant)
    backend = open_variant(variant, model_dir, store, threads=1, device="cpu")()
    assert (backend.name, backend.dtype) == (variant.backend, variant.dtype)
    figures = measure(reference_vectors, embed_texts(backend, calibration_texts()))
    if variant == Variant("onnx", "int8"):
        # Dynamic int8 costs MiniLM about 1% of cosine (more on CPUs without VNNI):
        # the gate may refuse it, and then the choice must refuse it too (next
        # test). A broken export would be far off.
        assert figures.mean_cosine > 0.95, figures
    else:
        assert figures.passed, figures.describe()


def test_a_variant_is_served_exactly_when_it_passes_the_gate(
    model_dir: Path, store: ModelStore, reference_vectors: Any
) -> None:
    int8 = Variant("onnx", "int8")
    skip_unless_supported(int8)
    backend = open_variant(int8, model_dir, store, threads=1, device="cpu")()
    figures = measure(reference_vectors, embed_texts(backend, calibration_texts()))
    asked = {"backend": "onnx", "dtype": "int8", "threads": 1, "device": "cpu"}
    if figures.passed:
        choice = choose_variant(model_dir, store, **asked)  # type: ignore[arg-type]
        assert choice.variant == int8
        assert choice.gate is not None
        assert choice.gate.passed
    else:
        with pytest.raises(BackendError) as refused:
            choose_variant(model_dir, store, **asked)  # type: ignore[arg-type]
        message = str(refused.value)
        assert "onnx/int8: failed the accuracy gate" in message
        # The child's figures, as its message words them, are the test's own.
        quoted = re.search(r"mean cosine (\d\.\d+)", message)
        assert quoted is not None, message
        assert float(quoted.group(1)) == pytest.approx(figures.mean_cosine, abs=1e-4)


def test_two_processes_asking_at_once_export_once(tmp_path: Path, model_dir: Path) -> None:
    outputs = run_at_once(_EXPORT, str(model_dir), str(tmp_path))
    paths = {json.loads(out)["path"] for out, _ in outputs}
    assert len(paths) == 1
    logs = "".join(err for _, err in outputs)
    assert logs.count("exported ") == 1, logs
    assert logs.count("embedloom.store built ") == 1, logs
    assert not list(Path(paths.pop()).parent.glob(".partial-*"))


def test_a_truncated_export_is_rebuilt(
    tmp_path: Path, model_dir: Path, store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    # A copy of the module's export, so this test builds only the replacement.
    built = onnx_export(ONNX_FP32, model_dir, store)
    home = tmp_path / "home"
    shutil.copytree(store.home / "derived", home / "derived")
    copy = ModelStore(home, offline=True)
    export = onnx_export(ONNX_FP32, model_dir, copy)
    assert export != built
    assert (export / MODEL_FILE).stat().st_size > 0
    with (export / MODEL_FILE).open("r+b") as damaged:
        damaged.truncate((export / MODEL_FILE).stat().st_size // 2)

    with caplog.at_level("WARNING", logger="embedloom.store"):
        rebuilt = onnx_export(ONNX_FP32, model_dir, copy)
    assert rebuilt == export
    assert "rebuilding" in caplog.text
    assert "model.onnx has" in caplog.text
    assert (rebuilt / MODEL_FILE).read_bytes() == (built / MODEL_FILE).read_bytes()


def test_the_server_reports_the_variant_and_its_gate_figures(
    store: ModelStore, reference_model: Any
) -> None:
    with ServerProcess.start(
        "--backend", "onnx", "--dtype", "fp32", "--home", str(store.home)
    ) as server:
        info = httpx.get(f"{server.url}/info").json()
        texts = ["How do I reset my password?", "The striker scored twice."]
        embedded = httpx.post(f"{server.url}/embed", json={"inputs": texts}, timeout=30)
        vectors = np.array(embedded.json())
        # The export pools inside its graph: no per-token vectors, said so.
        per_token = httpx.post(f"{server.url}/embed_all", json={"inputs": texts}, timeout=30)
    assert per_token.status_code == 400
    assert "need the torch backend" in per_token.json()["error"]
    assert (info["backend"], info["model_dtype"]) == ("onnx", "float32")
    choice = info["backend_choice"]
    assert choice["variant"] == "onnx/fp32"
    assert choice["reason"] == "the only variant allowed"
    assert choice["accuracy_gate"]["mean_cosine"] >= 0.999
    expected = reference_model.encode(texts)
    assert np.einsum("ij,ij->i", vectors, expected).min() > 0.999


def test_a_variant_with_no_such_dtype_stops_the_server_naming_the_choices(tmp_path: Path) -> None:
    embedloom = str(Path(sys.executable).with_name("embedloom"))
    result = subprocess.run(
        [embedloom, "serve", "--backend", "onnx", "--dtype", "bf16", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode != 0
    assert "no variant onnx/bf16" in result.stderr
    assert "torch/bf16" in result.stderr
