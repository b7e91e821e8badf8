"""The batch job end to end: formats, order, resume after kill -9, bad input,
processes, and memory that does not grow with the input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from embedloom import InvalidInput, Settings
from embedloom.batch import JobOptions, run_job
from embedloom.batch.readers import BatchInputError
from tests.helpers import sample_texts

pytestmark = pytest.mark.model

EMBEDLOOM = str(Path(sys.executable).with_name("embedloom"))
# For the tests that start many jobs or long ones: ONNX Runtime starts in a third
# of torch's time (no torch import) and runs these short rows faster; what they
# test (resume, memory) does not depend on the backend.
ONNX = ("--backend", "onnx", "--dtype", "fp32")
TEXTS = sample_texts(300, seed=11)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_input(directory: Path, kind: str, texts: list[str]) -> Path:
    path = directory / f"input.{kind}"
    if kind == "txt":
        path.write_text("".join(t + "\n" for t in texts))
    elif kind == "jsonl":
        path.write_text(
            "".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts))
        )
    elif kind == "csv":
        pa_csv.write_csv(pa.table({"n": list(range(len(texts))), "text": texts}), path)
    else:
        pq.write_table(pa.table({"n": list(range(len(texts))), "text": texts}), path)
    return path


def read_output(path: Path) -> tuple[np.ndarray, list[int], list[str] | None]:
    if path.suffix == ".npy":
        matrix = np.load(path)
        return matrix, list(range(len(matrix))), None
    table = pq.read_table(path)
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    ids = table.column("id").to_pylist() if "id" in table.column_names else None
    return vectors, table.column("row").to_pylist(), ids


@pytest.fixture(scope="module")
def expected(reference_encode: Callable[[list[str]], Any]) -> Any:
    """sentence-transformers' vectors for ``TEXTS``, computed once for the module."""
    return reference_encode(TEXTS)


def job(tmp_path: Path, source: Path, output: str, **options: Any) -> Any:
    return run_job(
        JobOptions(
            input=str(source), output=tmp_path / output, quiet=True, chunk_size=64, **options
        )
    )


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv", "parquet"])
def test_each_input_format_gives_the_embedders_vectors_in_order(
    tmp_path: Path, kind: str, expected: Any
) -> None:
    source = write_input(tmp_path, kind, TEXTS)
    id_field = "id" if kind == "jsonl" else None
    summary = job(tmp_path, source, "out.parquet", id_field=id_field)
    vectors, rows, ids = read_output(tmp_path / "out.parquet")
    assert summary.rows == len(TEXTS)
    assert rows == list(range(len(TEXTS)))
    np.testing.assert_allclose(vectors, expected, atol=2e-5)
    if kind == "jsonl":
        assert ids == [f"doc-{i}" for i in range(len(TEXTS))]
    assert not (tmp_path / "out.parquet.partial").exists()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_npy_output_in_order_and_dtype(tmp_path: Path, dtype: str, expected: Any) -> None:
    source = write_input(tmp_path, "txt", TEXTS)
    job(tmp_path, source, "out.npy", output_dtype=dtype)
    matrix = np.load(tmp_path / "out.npy")
    assert matrix.dtype == np.dtype(dtype)
    assert matrix.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(
        matrix.astype(np.float32),
        expected,
        atol=2e-5 if dtype == "float32" else 2e-3,
    )


def test_stdin_lines_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    result = subprocess.run(
        [EMBEDLOOM, "embed", "-", "-o", str(out), "--quiet"],
        input="".join(t + "\n" for t in TEXTS[:40]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert re.match(
        r"embedded 40 rows in [\d.]+ s \(model loaded in [\d.]+ s\) \(\d+ rows/s\), "
        r"peak memory \d+ MB",
        result.stdout,
    )
    assert read_output(out)[0].shape == (40, 384)


def test_an_existing_output_or_partial_run_is_not_overwritten_silently(tmp_path: Path) -> None:
    source = write_input(tmp_path, "txt", TEXTS[:10])
    job(tmp_path, source, "out.parquet")
    with pytest.raises(InvalidInput, match="--overwrite"):
        job(tmp_path, source, "out.parquet")
    (tmp_path / "other.npy.partial").mkdir()
    with pytest.raises(InvalidInput, match="--resume"):
        job(tmp_path, source, "other.npy")


# -- bad input ---------------------------------------------------------------------


_BAD_JSONL = (
    b'{"text": "fine one"}\n'
    b"{not json\n"
    b'{"other": "no text field"}\n'
    b'{"text": "bad \xff byte"}\n'
    b'{"text": ""}\n'
    b'{"text": "fine two"}\n'
)


def test_a_bad_row_stops_the_job_naming_file_line_and_reason(tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_bytes(_BAD_JSONL)
    with pytest.raises(BatchInputError, match=r"bad\.jsonl:2: not valid JSON"):
        job(tmp_path, source, "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_skip_mode_writes_every_reject_with_its_line_and_counts_them(tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_bytes(_BAD_JSONL)
    summary = job(tmp_path, source, "out.parquet", on_error="skip")
    assert summary.rows == 2
    assert summary.rejected == 4
    rejects = [
        json.loads(line)
        for line in (tmp_path / "out.parquet.rejects.jsonl").read_text().splitlines()
    ]
    assert [r["where"].rsplit(":", 1)[1] for r in rejects] == ["2", "3", "4", "5"]
    reasons = " | ".join(r["reason"] for r in rejects)
    for words in ("not valid JSON", "no field 'text'", "not valid UTF-8", "empty text"):
        assert words in reasons
    assert read_output(tmp_path / "out.parquet")[1] == [0, 5]  # input rows kept


def test_bad_txt_and_csv_rows_and_a_missing_column(tmp_path: Path) -> None:
    txt = tmp_path / "bad.txt"
    txt.write_bytes(b"good\n\nbad \xfe\nalso good\n")
    with pytest.raises(BatchInputError, match=r"bad\.txt:2: empty text"):
        job(tmp_path, txt, "a.parquet")
    summary = job(tmp_path, txt, "b.parquet", on_error="skip")
    assert (summary.rows, summary.rejected) == (2, 2)
    csv = write_input(tmp_path, "csv", ["one", "two"])
    with pytest.raises(BatchInputError, match="column 'body'"):
        job(tmp_path, csv, "c.parquet", column="body", on_error="skip")
    parquet = write_input(tmp_path, "parquet", ["one", "two"])
    with pytest.raises(BatchInputError, match="no column 'body'"):
        job(tmp_path, parquet, "d.parquet", column="body")


def test_a_fixed_mistake_needs_no_resume(tmp_path: Path) -> None:
    """The trap of the first hour: a wrong column used to leave a partial run that
    every later run tripped over ("pass --resume"), and --resume then refused."""
    source = write_input(tmp_path, "csv", ["one", "two"])
    with pytest.raises(BatchInputError, match="no column 'body'"):
        job(tmp_path, source, "out.parquet", column="body")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.csv"]
    assert job(tmp_path, source, "out.parquet", column="text").rows == 2


# -- resume after kill -9 -----------------------------------------------------------


@pytest.mark.parametrize("suffix", ["parquet", "npy"])
def test_killed_then_resumed_output_is_byte_identical(tmp_path: Path, suffix: str) -> None:
    source = write_input(tmp_path, "txt", sample_texts(640, seed=5, words=(3, 10)))
    flags = ["--chunk-size", "64", "--quiet", "--log-format", "json", "--log-level", "debug", *ONNX]
    whole = tmp_path / f"whole.{suffix}"
    subprocess.run(
        [EMBEDLOOM, "embed", str(source), "-o", str(whole), *flags],
        check=True,
        capture_output=True,
        timeout=300,
    )

    cut = tmp_path / f"cut.{suffix}"
    victim = subprocess.Popen(
        [EMBEDLOOM, "embed", str(source), "-o", str(cut), *flags],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert victim.stderr is not None
    for line in victim.stderr:  # wait for a few chunks to be written, then kill -9
        if '"chunk 5 written' in line:
            break
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert not cut.exists()
    refused = subprocess.run(
        [EMBEDLOOM, "embed", str(source), "-o", str(cut), *flags], capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert "--resume" in refused.stderr

    resumed = subprocess.run(
        [EMBEDLOOM, "embed", str(source), "-o", str(cut), "--resume", *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert digest(cut) == digest(whole)


# -- processes and memory ------------------------------------------------------------


def test_two_processes_give_the_same_output_within_the_thread_budget(tmp_path: Path) -> None:
    source = write_input(tmp_path, "txt", TEXTS)
    settings = Settings.from_environment().replace(threads=2)
    one = job(tmp_path, source, "one.npy", settings=settings)
    two = job(tmp_path, source, "two.npy", processes=2, settings=settings)
    assert one.rows == two.rows == len(TEXTS)
    np.testing.assert_allclose(
        np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"), atol=2e-5
    )


def test_two_processes_account_their_threads(tmp_path: Path) -> None:
    source = write_input(tmp_path, "txt", TEXTS[:50])
    result = subprocess.run(
        [
            EMBEDLOOM,
            "embed",
            str(source),
            "-o",
            str(tmp_path / "o.npy"),
            "--processes",
            "2",
            "--threads",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "2 worker processes × 1 compute threads = 2, within" in result.stderr
    too_many = subprocess.run(
        [
            EMBEDLOOM,
            "embed",
            str(source),
            "-o",
            str(tmp_path / "p.npy"),
            "--processes",
            "3",
            "--threads",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert too_many.returncode == 2
    assert "more compute threads than cores" in too_many.stderr


def _peak_mb(tmp_path: Path, rows: int) -> float:
    source = tmp_path / f"short-{rows}.txt"
    # One-token rows: what is measured is the rows held, not their length, and the
    # model's time per row is half that of "row 12 stone".
    source.write_text("stone\n" * rows)
    result = subprocess.run(
        [
            EMBEDLOOM,
            "embed",
            str(source),
            "-o",
            str(tmp_path / f"short-{rows}.parquet"),
            "--quiet",
            "--max-batch-size",
            "128",
            *ONNX,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        # Two malloc arenas, not one per thread: the peak then tracks what the job
        # holds rather than how its threads happened to fragment the heap (on a busy
        # machine the default arenas added 20-30 MB to either run at random).
        env={**os.environ, "MALLOC_ARENA_MAX": "2"},
    )
    assert result.returncode == 0, result.stderr
    return float(re.search(r"peak memory (\d+) MB", result.stdout).group(1))  # type: ignore[union-attr]


@pytest.mark.timeout(600)
def test_memory_does_not_grow_with_the_input(tmp_path: Path) -> None:
    small = _peak_mb(tmp_path, 3_000)
    large = _peak_mb(tmp_path, 30_000)
    # Ten times the rows, not their vectors: holding the 27,000 more of them (41 MB
    # as float32, more as Arrow or Python lists) would show here. Measured under
    # load with two arenas: +20 MB (pyarrow's pools and the Parquet assembly).
    assert large <= small + 35, (small, large)


def test_a_sparse_model_writes_its_non_zero_indices_and_values(
    tmp_path: Path, splade_dir: Path
) -> None:
    from sentence_transformers import SparseEncoder

    texts = TEXTS[:80]
    source = write_input(tmp_path, "jsonl", texts)
    settings = Settings(model=(str(splade_dir),), backend="torch", dtype="fp32")
    summary = job(tmp_path, source, "out.parquet", id_field="id", settings=settings)
    assert summary.rows == len(texts)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["row", "id", "indices", "values"]
    assert table.column("row").to_pylist() == list(range(len(texts)))
    expected = SparseEncoder(str(splade_dir), device="cpu").encode(texts).to_dense().numpy()
    for row, indices, values in zip(
        expected,
        table.column("indices").to_pylist(),
        table.column("values").to_pylist(),
        strict=True,
    ):
        assert indices == np.flatnonzero(row).tolist()
        np.testing.assert_allclose(values, row[indices], atol=1e-5)
    with pytest.raises(InvalidInput, match=r"use -o FILE\.parquet"):
        job(tmp_path, source, "out.npy", settings=settings)
    assert not (tmp_path / "out.npy.partial").exists()


def test_a_cross_encoder_is_refused_by_the_batch_job_in_one_line(
    tmp_path: Path, reranker_dir: Path
) -> None:
    source = write_input(tmp_path, "txt", TEXTS[:5])
    out = tmp_path / "out.parquet"
    result = subprocess.run(
        [EMBEDLOOM, "embed", str(source), "-o", str(out), "--model", str(reranker_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("embedloom: ")
    assert "is a cross-encoder" in line
    assert "POST /rerank" in line
    assert not out.exists()
    assert not out.with_name("out.parquet.partial").exists()
