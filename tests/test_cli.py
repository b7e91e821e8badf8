"""The command line: version, flag errors, and a missing model, without a traceback."""

from __future__ import annotations

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
