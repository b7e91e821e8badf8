"""Test helpers: a real server process, and texts to embed."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

# The conftest's ``guarded`` server: API keys, a small body limit, a short body timeout.
GUARDED_KEYS = ("key-one-5f2a", "key-two-9c1e")
GUARDED_BODY_LIMIT = 64 * 1024
GUARDED_BODY_TIMEOUT = 1.0

_WORDS = tuple(
    (
        "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima "
        "mike november oscar papa quebec romeo sierra tango uniform victor whiskey "
        "xray yankee zulu river stone cloud server batch vector token model thread "
        "queue memory latency"
    ).split()
)


def sample_texts(count: int, *, seed: int = 3, words: tuple[int, int] = (3, 40)) -> list[str]:
    """Distinct texts of varied length, deterministic per seed."""
    rng = random.Random(seed)
    return [
        f"{index}: " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(*words)))
        for index in range(count)
    ]


# Words that are one token each for the default model's tokenizer.
_ONE_TOKEN_WORDS = ("alpha", "bravo", "charlie", "delta", "river", "stone", "cloud", "server")


def long_text(tokens: int = 220) -> str:
    """A text of exactly ``tokens`` tokens for the default model, [CLS] and [SEP] included."""
    return " ".join(_ONE_TOKEN_WORDS[i % len(_ONE_TOKEN_WORDS)] for i in range(tokens - 2))


def build_tiny_bert(tokenizer_dir: Path, target: Path, *, seed: int = 7) -> Path:
    """A second embedding model no package ships, for tests and benchmarks: a 2-layer
    BERT of width 64 with seeded random weights, CLS pooling, no normalisation,
    inputs up to 128 tokens (``tokenizer_dir``'s tokenizer), saved at ``target`` as
    a sentence-transformers directory. Its vectors mean nothing; that it is a real,
    different model (compared with sentence-transformers on the same directory) is
    what routing needs."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    bert = target.with_name(target.name + "-weights")
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(bert)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(bert)
    modules = [Transformer(str(bert), max_seq_length=128), Pooling(64, pooling_mode="cls")]
    SentenceTransformer(modules=modules, device="cpu").save(str(target))
    return target


def build_cross_encoder(
    base_dir: Path, target: Path, *, labels: tuple[str, ...] = (), seed: int = 11
) -> Path:
    """A cross-encoder no package ships: ``base_dir``'s encoder (the packaged MiniLM,
    so shapes, speed and tokenisation are a real MiniLM cross-encoder's) with a new
    sequence-classification head of seeded random weights, saved at ``target`` as
    sentence-transformers saves a ``CrossEncoder``; one output (a reranker) unless
    ``labels`` names several (a classifier). Its scores mean nothing: it proves
    plumbing, not quality."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(seed)
    model = CrossEncoder(
        str(base_dir), num_labels=max(1, len(labels)), max_length=256, device="cpu"
    )
    if labels:
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {label: i for i, label in enumerate(labels)}
    model.save(str(target))
    return target


def build_sparse_encoder(base_dir: Path, target: Path, *, seed: int = 13) -> Path:
    """A SPLADE model no package ships: ``base_dir``'s encoder with a masked-LM head
    of seeded random weights and a bias of -4, so that, as in a trained SPLADE
    model, most of the vocabulary stays zero (about 100 of 30,522 entries are
    not), saved at ``target`` as a ``SparseEncoder``."""
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    torch.manual_seed(seed)
    mlm = MLMTransformer(str(base_dir), max_seq_length=256)
    with torch.no_grad():
        mlm.auto_model.cls.predictions.bias.fill_(-4.0)
    SparseEncoder(modules=[mlm, SpladePooling("max")], device="cpu").save(str(target))
    return target


def run_at_once(script: str, *args: str, processes: int = 2) -> list[tuple[str, str]]:
    """Start ``processes`` Python children running ``script`` with ``args`` at the
    same moment; each one's (stdout, stderr), after checking that all succeeded."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    outputs = [child.communicate(timeout=300) for child in children]
    assert [child.returncode for child in children] == [0] * processes, outputs
    return outputs


def metric_value(text: str, sample: str, **labels: str) -> float:
    """The sum of ``/metrics`` samples named ``sample`` whose labels include ``labels``
    (0 when there is none yet): one figure over every model unless a label picks one."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        found.value
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == sample and labels.items() <= found.labels.items()
    )


class ServerProcess:
    """``embedloom serve`` in a subprocess on a free port.

    Readiness and every other event are taken from the server's own log lines
    (JSON), read by a thread into a queue: tests wait for a line, never sleep.
    """

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.log: list[dict[str, Any]] = []
        self._log_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        ready = self.wait_for_log(lambda e: e.get("message", "").startswith("serving on "), 180)
        self.url = ready["message"].removeprefix("serving on ")

    @classmethod
    def start(cls, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        command = [
            str(Path(sys.executable).with_name("embedloom")),
            "serve",
            "--port",
            "0",
            "--log-format",
            "json",
            *args,
        ]
        process = subprocess.Popen(
            command,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        return cls(process)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                entry = {"message": raw.rstrip("\n"), "raw": True}
            with self._log_lock:
                self.log.append(entry)
            self.lines.put(entry)
        self.lines.put({"message": "<eof>", "eof": True})

    def wait_for_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the server never logged the expected line")
            entry = self.lines.get(timeout=remaining)
            if entry.get("eof"):
                raise RuntimeError(f"server exited early: {self.tail()}")
            if predicate(entry):
                return entry

    def engine_pids(self, count: int) -> set[int]:
        """Wait until ``count`` more processes (workers) have logged their engine
        running; their pids."""
        pids: set[int] = set()
        while len(pids) < count:
            entry = self.wait_for_log(
                lambda e: "pid" in e and "engine running" in e["message"], 180
            )
            pids.add(int(entry["pid"]))
        return pids

    def log_entries(self) -> list[dict[str, Any]]:
        with self._log_lock:
            return list(self.log)

    def tail(self, lines: int = 20) -> str:
        return "\n".join(str(e) for e in self.log_entries()[-lines:])

    def terminate(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        if self.process.stderr is not None:
            self.process.stderr.close()
