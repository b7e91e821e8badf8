"""The command line: version, flags, and every user mistake as one line without a
traceback (exit 2), refused before anything is written or loaded."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from embedloom import __version__
from embedloom.cli import build_parser

EMBEDLOOM = str(Path(sys.executable).with_name("embedloom"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EMBEDLOOM, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"embedloom {__version__}"


def test_serve_flags_come_from_the_settings() -> None:
    help_text = build_parser().parse_args(["serve", "--max-batch-tokens", "1024"])
    assert help_text.max_batch_tokens == 1024
    serve_help = run("serve", "--help").stdout
    for flag in (
        "--host",
        "--port",
        "--model",
        "--max-batch-tokens",
        "--max-batch-size",
        "--max-client-batch-size",
        "--max-queued-inputs",
        "--log-level",
    ):
        assert flag in serve_help
    assert "EMBEDLOOM_MAX_QUEUED_INPUTS" in serve_help


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["serve", "--port", "eighty"], "--port: expected int"),
        (["serve", "--log-level", "loud"], "--log-level: expected one of debug, info"),
        (["serve", "--max-batch-size", "0"], "max_batch_size must be at least 1"),
    ],
)
def test_bad_flags_exit_2_with_a_message(args: list[str], words: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_model_exits_2_naming_where_it_looked(tmp_path: Path) -> None:
    result = run("serve", "--model", "acme/absent-model")
    assert result.returncode == 2
    assert "acme/absent-model" in result.stderr
    assert "Hugging Face cache" in result.stderr
    assert "Traceback" not in result.stderr


# -- a user's mistakes: one `embedloom: …` line naming the fix, exit 2, nothing left ----


def _mistake(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("embedloom: ")
    for word in words:
        assert word in lines[0]


def _inputs(folder: Path) -> dict[str, Path]:
    files = {
        "txt": folder / "in.txt",
        "jsonl": folder / "in.jsonl",
        "csv": folder / "in.csv",
        "parquet": folder / "in.parquet",
        "empty_csv": folder / "empty.csv",
        "fake_parquet": folder / "fake.parquet",
    }
    files["txt"].write_text("one\ntwo\n")
    files["jsonl"].write_text('{"body": "one"}\n{"body": "two"}\n')
    files["csv"].write_text("n,body\n1,one\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["one"]}), files["parquet"])
    files["empty_csv"].write_text("")
    files["fake_parquet"].write_text("not parquet")
    (folder / "a-directory.txt").mkdir()
    return files


EMBED_MISTAKES = [
    (["missing.txt", "-o", "out.parquet"], ["missing.txt", "no such file"]),
    (["a-directory.txt", "-o", "out.parquet"], ["not a file"]),
    (["in.doc", "-o", "out.parquet"], ["unknown input format", ".txt, .jsonl"]),
    (["in.txt", "-o", "out.xlsx"], ["unknown output format", ".parquet or .npy"]),
    (["in.txt", "-o", "no/such/dir/out.parquet"], ["no such directory", "create it"]),
    (["in.jsonl", "-o", "out.parquet"], ["no field 'text'", "'body'", "--field"]),
    (["in.jsonl", "-o", "out.parquet", "--field", "body", "--id-field", "id"], ["--id-field"]),
    (["in.csv", "-o", "out.parquet"], ["no column 'text'", "n, body", "--column"]),
    (["in.parquet", "-o", "out.npy", "--column", "title"], ["no column 'title'", "body"]),
    (["empty.csv", "-o", "out.parquet"], ["cannot read it as CSV"]),
    (["fake.parquet", "-o", "out.parquet"], ["cannot read it as PARQUET"]),
    (["in.txt", "-o", "out.parquet", "--processes", "0"], ["--processes"]),
    (["in.txt", "-o", "out.parquet", "--chunk-size", "4"], ["--chunk-size"]),
    (["in.txt", "-o", "out.parquet", "--resume", "--overwrite"], ["--resume and --overwrite"]),
    (["-", "-o", "out.parquet", "--resume"], ["stdin cannot be resumed"]),
    (["in.txt", "-o", "out.parquet", "--on-error", "ignore"], ["--on-error", "invalid choice"]),
    (["in.txt"], ["-o/--output"]),
    # What embed --ray does not do is refused, never silently skipped.
    (["in.parquet", "-o", "out.npy", "--ray"], ["embed --ray does not support", "a .npy output"]),
    (
        ["in.parquet", "-o", "out", "--ray", "--output-dtype", "float16", "--processes", "2"],
        ["--output-dtype float16", "--processes"],
    ),
    (["-", "-o", "out", "--ray"], ["embed --ray does not support stdin"]),
]


@pytest.mark.parametrize(
    ("args", "words"), EMBED_MISTAKES, ids=[" ".join(args) for args, _ in EMBED_MISTAKES]
)
def test_embed_mistakes_are_one_line_and_leave_nothing(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    _inputs(tmp_path)
    before = set(tmp_path.iterdir())
    result = subprocess.run(
        [EMBEDLOOM, "embed", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    _mistake(result, *words)
    assert set(tmp_path.iterdir()) == before, "a refused run writes nothing"


SERVE_MISTAKES = [
    (["--host", "no-such-host.invalid"], ["no-such-host.invalid", "--host"]),
    (["--host", "203.0.113.7"], ["not an address of this machine", "--host"]),
    (["--api-key-file", "/no/such/keys"], ["/no/such/keys"]),
    (["--port", "70000"], ["port must be between 0 and 65535"]),
    (["--workers", "zero"], ["--workers: expected int"]),
    (["--bogus"], ["unrecognized arguments: --bogus"]),
    (["--config", "/no/such.toml"], ["config /no/such.toml", "No such file"]),
    (["--model", "a=x", "--model", "a=y"], ["the name a is given to two models", "NAME=REF"]),
]


@pytest.mark.parametrize(
    ("args", "words"), SERVE_MISTAKES, ids=[" ".join(args) for args, _ in SERVE_MISTAKES]
)
def test_serve_mistakes_are_one_line(args: list[str], words: list[str]) -> None:
    _mistake(run("serve", *args), *words)


@pytest.mark.parametrize(
    "mode", [[], ["--workers", "2"], ["--workers", "2", "--preload"], ["--ray"]]
)
def test_a_port_in_use_is_refused_before_the_model_loads(mode: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port), "--log-format", "json", *mode)
    _mistake(result, f"127.0.0.1:{port}", "already in use", "--port")
    # Refused before the model: nothing was logged about loading or choosing it.
    assert "model" not in result.stderr.split("embedloom: ", 1)[0]
