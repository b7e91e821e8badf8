"""The README's Python examples run as pasted, and print what their comments say.

Each fenced ``python`` block after a ``<!-- readme-test -->`` marker runs in a
fresh interpreter; after ``<!-- readme-test: server -->`` it runs against the
suite's real server, its address put in place of the README's 127.0.0.1:8080.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ServerProcess

pytestmark = pytest.mark.model

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"<!-- readme-test(?P<server>: server)? -->\n```python\n(?P<code>.*?)```", re.S)
_PRINTS = re.compile(r"^\s*print\(.*\)  # (.*)$", re.M)
BLOCKS = [(m["code"], bool(m["server"])) for m in _BLOCK.finditer(README.read_text())]


def test_the_readme_marks_its_examples() -> None:
    assert len(BLOCKS) >= 3, "the README's runnable examples lost their markers"


@pytest.mark.parametrize(
    ("code", "needs_server"), BLOCKS, ids=[c.split("\n")[0] for c, _ in BLOCKS]
)
def test_a_readme_example_runs_as_pasted(
    code: str, needs_server: bool, request: pytest.FixtureRequest
) -> None:
    if needs_server:
        server: ServerProcess = request.getfixturevalue("server")
        code = code.replace("http://127.0.0.1:8080", server.url)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # A print's comment is what the reader is told it prints: it must be true.
    promised = [m.group(1) for m in _PRINTS.finditer(code)]
    assert result.stdout.splitlines() == promised
