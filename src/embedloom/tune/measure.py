"""One trial of ``tune``: the candidate's config file served by a real ``embedloom
serve`` on a free loopback port, loaded with ``bench``'s load generator, stopped.

The server runs exactly the file ``tune`` would write (``knobs.config_text``), so
what was measured is what the user gets. Each trial starts afresh: settings such
as the variant, the sharing plan and the worker processes are fixed at start.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from embedloom.bench.api import Api
from embedloom.bench.http import Endpoint
from embedloom.bench.load import LoadPlan, run_step
from embedloom.bench.report import summarize
from embedloom.bench.workload import Workload
from embedloom.config import Settings
from embedloom.errors import EmbedloomError
from embedloom.offload import start_thread
from embedloom.tune.knobs import config_text
from embedloom.tune.search import Measurement

__all__ = ["ServerTrial", "TrialFailed"]

_TEI = Api("tei", "/embed")
# A first start may run the variant trial and build exports: minutes, not seconds.
_START_LIMIT_SECONDS = 900.0
_STOP_LIMIT_SECONDS = 60.0


class TrialFailed(EmbedloomError):
    """A candidate's server did not start (its last log lines say why)."""


class ServerTrial:
    """Measure a candidate: ``settings``' model and store, the ``pinned`` settings and
    the candidate's, under ``plan`` with ``workload``."""

    def __init__(
        self,
        settings: Settings,
        workload: Workload,
        plan: LoadPlan,
        pinned: Mapping[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self._pinned = dict(pinned or {})
        self._workload = workload
        self._plan = plan

    def __call__(self, candidate: Mapping[str, Any]) -> Measurement:
        with tempfile.TemporaryDirectory(prefix="embedloom-tune-") as scratch:
            config = Path(scratch) / "candidate.toml"
            served = self._pinned | dict(candidate)
            config.write_text(config_text(self._settings, served), encoding="utf-8")
            try:
                with _Server(config, self._settings) as url:
                    step = asyncio.run(
                        run_step(
                            Endpoint.parse(f"{url}/embed"), _TEI, self._workload, self._plan, {}
                        )
                    )
            except TrialFailed as exc:
                # A combination the server refuses (say, more replicas than a worker's
                # threads): a candidate that cannot win, not the end of the search.
                return Measurement(0.0, None, 1.0, failed=str(exc))
        summary = summarize(step, 0)
        sent = max(1, summary.requests)
        refused = summary.errors.get("429", 0)
        return Measurement(
            sentences_per_s=summary.sentences_per_s,
            p99_ms=summary.p99_ms,
            error_rate=(summary.requests - summary.ok - refused) / sent,
            refused_rate=refused / sent,
        )


class _Server:
    """``embedloom serve --config FILE --port 0``, up until the block ends."""

    def __init__(self, config: Path, settings: Settings) -> None:
        command = [
            sys.executable,
            "-m",
            "embedloom.cli",
            "serve",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-format",
            "json",
        ]
        env = dict(os.environ)
        if settings.home:
            env["EMBEDLOOM_HOME"] = settings.home
        if settings.offline:
            env["EMBEDLOOM_OFFLINE"] = "true"
        # The trial's own settings come from the file alone, not the caller's variables.
        for name in list(env):
            if name.startswith("EMBEDLOOM_") and name not in (
                "EMBEDLOOM_HOME",
                "EMBEDLOOM_OFFLINE",
            ):
                del env[name]
        self._process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._tail: list[str] = []
        start_thread(self._read, name="tune-server-log")

    def _read(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def __enter__(self) -> str:
        deadline = time.monotonic() + _START_LIMIT_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                status = self._process.wait()
                last = " | ".join(self._tail) or "nothing logged"
                raise TrialFailed(f"the candidate's server exited ({status}): {last}")
            message = _message(line)
            self._tail = [*self._tail[-4:], message]
            if message.startswith("serving on http://"):
                return message.removeprefix("serving on ").split()[0]
        self._stop()
        raise TrialFailed(f"the candidate's server did not start in {_START_LIMIT_SECONDS:g} s")

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(_STOP_LIMIT_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def _message(line: str) -> str:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return line.rstrip("\n")
    return str(entry.get("message", "")) if isinstance(entry, dict) else line.rstrip("\n")
