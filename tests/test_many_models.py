"""Several models in one process: each name its own model's vectors, one thread budget
shared without waste, loading on demand and unloading when idle.

Two real models: the packaged MiniLM ("mini", 384 dimensions, mean pooling,
normalised) and a small random-weight BERT built by the fixture ("tiny", 64
dimensions, CLS pooling), each compared with sentence-transformers on the same
directory. Assertions read counts and states from ``statistics()``, never times.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from embedloom.config import Settings, SettingsError
from embedloom.errors import ModelNotFound, Overloaded
from embedloom.offload import run_in_thread
from embedloom.registry import LoadState, Registry
from embedloom.sharing.slots import ComputeSlots
from tests.helpers import ServerProcess, sample_texts

pytestmark = pytest.mark.model

Encode = Callable[[list[str]], Any]


def _settings(second_model_dir: Path, **changes: Any) -> Settings:
    return Settings(
        model=("mini=all-MiniLM-L6-v2", f"tiny={second_model_dir}"),
        backend="torch",
        dtype="fp32",
        threads=2,
        offline=True,
        **changes,
    )


def _state(registry: Registry, name: str) -> LoadState:
    return next(m.state for m in registry.statistics().models if m.name == name)


async def test_each_name_gets_its_own_models_vectors_under_concurrent_mixed_requests(
    second_model_dir: Path,
    reference_encode: Encode,
    second_reference_encode: Encode,
    tmp_path: Path,
) -> None:
    config = tmp_path / "embedloom.toml"
    config.write_text(
        f'[models.mini]\nmodel = "all-MiniLM-L6-v2"\naliases = ["text-embedding-ada-002"]\n\n'
        f'[models.tiny]\nmodel = "{second_model_dir}"\nmax-batch-tokens = 4096\n'
    )
    texts = sample_texts(64, seed=5)
    expected = {
        "mini": await run_in_thread(reference_encode, texts),
        "tiny": await run_in_thread(second_reference_encode, texts),
    }
    server = await run_in_thread(
        ServerProcess.start, "--config", str(config), "--backend", "torch", "--dtype", "fp32"
    )
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:

            async def ask(index: int) -> tuple[str, int, list[float]]:
                model = ("mini", "tiny", "text-embedding-ada-002")[index % 3]
                if index % 2:  # TEI's route, with the model field
                    answer = await client.post(
                        "/embed", json={"inputs": [texts[index]], "model": model}
                    )
                    answer.raise_for_status()
                    vector = answer.json()[0]
                else:
                    answer = await client.post(
                        "/v1/embeddings", json={"input": texts[index], "model": model}
                    )
                    answer.raise_for_status()
                    assert answer.json()["model"] == model
                    vector = answer.json()["data"][0]["embedding"]
                return ("tiny" if model == "tiny" else "mini"), index, vector

            answers = await asyncio.gather(*(ask(i) for i in range(64)))
            for model, index, vector in answers:
                # TEI's /embed normalises by default; tiny's model does not.
                want = expected[model][index]
                if model == "tiny" and index % 2:
                    want = want / np.linalg.norm(want)
                np.testing.assert_allclose(vector, want, atol=2e-5, err_msg=f"{model} {index}")

            unknown = await client.post("/v1/embeddings", json={"input": "x", "model": "gpt"})
            assert unknown.status_code == 404
            assert "'mini', 'tiny'" in unknown.json()["error"]["message"]
            tei_unknown = await client.post("/embed", json={"inputs": "x", "model": "gpt"})
            assert tei_unknown.status_code == 404
            assert "'mini', 'tiny'" in tei_unknown.json()["error"]

            listed = (await client.get("/v1/models")).json()
            assert [m["id"] for m in listed["data"]] == ["mini", "tiny"]
            assert {m["object"] for m in listed["data"]} == {"model"}
            info = (await client.get("/info")).json()
            assert info["model_id"] == "all-MiniLM-L6-v2"
            assert info["dimensions"] == 384  # the default model's, TEI's shape
            by_name = {m["name"]: m for m in info["models"]}
            assert (by_name["mini"]["dimensions"], by_name["tiny"]["dimensions"]) == (384, 64)
            assert by_name["tiny"]["max_input_length"] == 128
            assert by_name["tiny"]["max_batch_tokens"] == 4096
            assert "text-embedding-ada-002" in by_name["mini"]["names"]
            assert {m["state"] for m in info["models"]} == {"loaded"}
            metrics = (await client.get("/metrics")).text
            expected_ids = {"mini": info["model_id"], "tiny": "tiny-bert"}
            for model in ("mini", "tiny"):
                assert f'embedloom_inputs_embedded_total{{model="{model}"}}' in metrics
                assert f'model_id="{expected_ids[model]}"' in metrics
            assert "embedloom_compute_slots_held" in metrics
        assert await run_in_thread(server.terminate) == 0
    finally:
        await run_in_thread(server.__exit__, None, None, None)


async def test_a_flood_on_one_model_does_not_starve_the_other_and_the_budget_holds(
    second_model_dir: Path, second_reference_encode: Encode
) -> None:
    settings = _settings(second_model_dir, max_queued_inputs=256, max_client_batch_size=64)
    texts = sample_texts(64, seed=9)
    async with Registry(settings) as registry:
        slots = registry.slots.statistics()
        assert slots.budget == 2
        mini = registry.loaded_engine("mini")
        tiny = registry.loaded_engine("tiny")
        assert mini is not None
        assert tiny is not None

        # The busy model takes the whole budget while the other is idle.
        async with registry.use("mini") as engine:
            await asyncio.gather(*(engine.embed(texts[i::8]) for i in range(8)))
        assert registry.slots.statistics().peak_held_by["mini"] == 2

        # Flood mini past its admission bound; meanwhile tiny keeps answering.
        rejected = 0

        async def flood() -> None:
            nonlocal rejected
            async with registry.use("mini") as engine:
                try:
                    await engine.embed(texts)
                except Overloaded:
                    rejected += 1

        tiny_batches = tiny.statistics().batches_run
        flooding = [asyncio.ensure_future(flood()) for _ in range(12)]
        ran_while_flooded = 0
        for index in range(6):
            async with registry.use("tiny") as engine:
                vectors = (await engine.embed(texts[index * 8 : index * 8 + 8])).vectors
            np.testing.assert_allclose(
                vectors,
                await run_in_thread(second_reference_encode, texts[index * 8 : index * 8 + 8]),
                atol=1e-5,
            )
            if mini.statistics().queued_inputs > 0:
                ran_while_flooded += 1
        await asyncio.gather(*flooding)

        assert rejected > 0, "the flood filled mini's admission bound"
        assert ran_while_flooded > 0, "tiny's requests completed while mini's queue was full"
        assert tiny.statistics().batches_run >= tiny_batches + 6
        assert tiny.statistics().requests_failed == 0
        slots = registry.slots.statistics()
        assert slots.peak_held <= 2, "never more compute threads than the budget"
        assert slots.waited > 0, "the models queued for slots rather than oversubscribing"
        assert slots.held == 0


async def test_an_idle_model_is_unloaded_after_keep_alive_and_reloaded_with_the_same_vectors(
    second_model_dir: Path,
) -> None:
    settings = Settings(
        model=(f"tiny={second_model_dir}",),
        backend="torch",
        dtype="fp32",
        threads=2,
        offline=True,
        keep_alive=30,
    )
    texts = sample_texts(16, seed=11)
    now = asyncio.get_running_loop().time  # the registry's clock: the loop's
    async with Registry(settings) as registry:
        async with registry.use("tiny") as engine:
            before = (await engine.embed(texts)).vectors
            # In use: never unloaded, whatever the clock says.
            assert await registry.unload_idle(now() + 3600) == []
        assert await registry.unload_idle(now() + 1) == [], "not idle long enough"
        assert await registry.unload_idle(now() + 31) == ["tiny"]
        assert _state(registry, "tiny") is LoadState.UNLOADED
        assert registry.engines() == []
        async with registry.use("tiny") as engine:
            after = (await engine.embed(texts)).vectors
        np.testing.assert_allclose(after, before, atol=1e-6)
        status = registry.statistics().models[0]
        assert (status.loads, status.unloads, status.state) == (2, 1, LoadState.LOADED)


async def test_one_loaded_model_at_a_time_serves_alternating_requests_and_loads_once_per_turn(
    second_model_dir: Path,
) -> None:
    built: list[str] = []

    def factory(settings: Settings, name: str, slots: ComputeSlots) -> Any:
        from embedloom.engine import Engine

        built.append(name)
        return Engine.from_settings(settings, slots=slots, name=name)

    settings = _settings(second_model_dir, max_loaded_models=1)
    texts = sample_texts(24, seed=13)
    async with Registry(settings, engine_factory=factory) as registry:
        assert built == ["mini"], "only what fits is loaded at start"
        assert _state(registry, "tiny") is LoadState.UNLOADED

        # Many requests at once for the unloaded model: it is loaded once.
        async def embed(name: str, text: str) -> int:
            async with registry.use(name) as engine:
                return len((await engine.embed([text])).vectors[0])

        widths = await asyncio.gather(*(embed("tiny", t) for t in texts[:10]))
        assert widths == [64] * 10
        assert built == ["mini", "tiny"]

        # Alternating: every request succeeds; never two models loaded at once.
        widths = await asyncio.gather(
            *(embed(("mini", "tiny")[i % 2], t) for i, t in enumerate(texts))
        )
        assert widths == [(384, 64)[i % 2] for i in range(len(texts))]
        assert len(registry.engines()) == 1
        stats = {m.name: m for m in registry.statistics().models}
        assert stats["mini"].loads + stats["tiny"].loads == len(built)
        assert stats["mini"].unloads >= 1


async def test_a_waiter_that_gives_up_does_not_cancel_the_load_for_the_others(
    second_model_dir: Path,
) -> None:
    gate = threading.Event()

    def factory(settings: Settings, name: str, slots: ComputeSlots) -> Any:
        from embedloom.engine import Engine

        if name == "tiny":
            gate.wait(60)  # held until the first waiter has given up
        return Engine.from_settings(settings, slots=slots, name=name)

    settings = _settings(second_model_dir, max_loaded_models=1)
    async with Registry(settings, engine_factory=factory) as registry:

        async def width() -> int:
            async with registry.use("tiny") as engine:
                return len((await engine.embed(["x"])).vectors[0])

        first = asyncio.ensure_future(width())
        second = asyncio.ensure_future(width())
        await asyncio.sleep(0)
        assert _state(registry, "tiny") is LoadState.LOADING
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        gate.set()
        assert await second == 64
        assert _state(registry, "tiny") is LoadState.LOADED


def test_names_aliases_and_the_catch_all(second_model_dir: Path) -> None:
    settings = _settings(second_model_dir)
    registry = Registry(settings)
    assert registry.names() == ["mini", "tiny"]
    assert registry.served_name(None) == "mini"
    # What each was given as, and its id, answer too.
    assert registry.served_name("all-MiniLM-L6-v2") == "mini"
    assert registry.served_name("sentence-transformers/all-MiniLM-L6-v2") == "mini"
    assert registry.served_name("tiny-bert") == "tiny"
    with pytest.raises(ModelNotFound, match="it serves 'mini', 'tiny'"):
        registry.served_name("text-embedding-ada-002")
    catch_all = Registry(settings.replace(catch_all=True))
    assert catch_all.served_name("text-embedding-ada-002") == "mini"
    same = (("aliases", ("embedder",)),)
    with pytest.raises(SettingsError, match="'embedder' is given to both 'mini' and 'tiny'"):
        Registry(settings.replace(model_settings=(("mini", same), ("tiny", same))))
