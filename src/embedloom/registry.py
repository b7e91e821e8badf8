"""Several models in one process: names → engines over one thread budget.

Each served model has an engine of its own (its own batcher and admission
bound); all of them hold the process's one ``ComputeSlots``, so together they
never run more compute threads than the budget and an idle model reserves none.

A model is used under a lease (``async with registry.use(name) as engine``):
while any lease is out the model is never unloaded, so unloading never drops
admitted work. A model not loaded is loaded by the first request that needs it,
once however many ask at the same moment (single flight); the others wait for
that load within their deadline. ``keep_alive`` unloads a model idle that long;
``max_loaded_models`` unloads the least recently used idle model to make room.
The backend choice is read from the store, so a reload does not re-run the trial.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedloom.config import ModelSpec, Settings, SettingsError
from embedloom.errors import ModelLoading, ModelNotFound, Unavailable
from embedloom.offload import run_in_thread
from embedloom.scope import current_scope, loop_clock
from embedloom.sharing.slots import ComputeSlots, SlotStatistics
from embedloom.threads import usable_cores

if TYPE_CHECKING:
    from embedloom.engine import Engine

__all__ = ["EngineFactory", "LoadState", "ModelStatus", "Registry", "RegistryStatistics"]

logger = logging.getLogger("embedloom.registry")

# Builds a model's engine (blocking: resolves, chooses the variant, may read weights).
EngineFactory = Callable[[Settings, str, ComputeSlots], "Engine"]

# How long a request waits for its model to load when it has no deadline of its own.
_DEFAULT_LOAD_WAIT = 120.0


class LoadState(enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"


@dataclass(frozen=True, slots=True)
class ModelStatus:
    name: str
    names: tuple[str, ...]  # every name it answers to
    ref: str
    model_id: str
    state: LoadState
    leases: int
    loads: int
    unloads: int
    idle_seconds: float | None  # since the last lease ended; None while leased


@dataclass(frozen=True, slots=True)
class RegistryStatistics:
    models: tuple[ModelStatus, ...]
    slots: SlotStatistics


class _Served:
    """One model's place in the registry."""

    def __init__(
        self, spec: ModelSpec, settings: Settings, names: tuple[str, ...], model_id: str
    ) -> None:
        self.spec = spec
        self.model_id = model_id
        self.settings = settings
        self.names = names
        self.engine: Engine | None = None
        self.state = LoadState.UNLOADED
        self.transition: asyncio.Future[None] | None = None  # the load or unload under way
        self.leases = 0
        self.last_used = 0.0
        self.loads = 0
        self.unloads = 0


def _build_engine(settings: Settings, name: str, slots: ComputeSlots) -> Engine:
    from embedloom.engine import Engine

    return Engine.from_settings(settings, slots=slots, name=name)


class Registry:
    """The models a server serves. Use as ``async with Registry(settings)``."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine_factory: EngineFactory = _build_engine,
        engines: Sequence[Engine] = (),
        slots: ComputeSlots | None = None,
    ) -> None:
        """``engines``: engines built already (a pre-forking master's, or a test's),
        one per served model in order; the rest are built on first use.
        ``slots``: the compute slots ``engines`` were built with."""
        self._settings = settings
        self._factory = engine_factory
        self._slots = slots or ComputeSlots(settings.threads or usable_cores().usable)
        self._models: list[_Served] = []
        self._by_name: dict[str, _Served] = {}
        self._changed: asyncio.Condition | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._draining = False
        specs = settings.models
        for index, spec in enumerate(specs):
            engine = engines[index] if index < len(engines) else None
            resolved = _resolved_names(spec, settings, engine)
            names = tuple(dict.fromkeys((spec.name, *spec.aliases, *resolved)))
            served = _Served(spec, settings.for_model(spec.name), names, resolved[0])
            if engine is not None:
                from embedloom.engine import EngineState

                served.engine = engine  # built: started (if not yet) by ``start``
                if engine.state is EngineState.RUNNING:
                    served.state = LoadState.LOADED
            self._models.append(served)
        for served in self._models:
            for name in served.names:
                other = self._by_name.setdefault(name, served)
                if other is not served and name == served.spec.name:
                    # A served name wins over another model's alias.
                    self._by_name[name] = served
                elif other is not served and name in served.spec.aliases:
                    raise SettingsError(
                        f"aliases: the name {name!r} is given to both {other.spec.name!r} "
                        f"and {served.spec.name!r}"
                    )

    @classmethod
    def of_engine(cls, settings: Settings, engine: Engine) -> Registry:
        """A registry serving one engine built elsewhere."""
        return cls(
            settings.for_model(settings.models[0].name),
            engines=[engine],
            slots=engine.compute_slots,
        )

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Load the models (as many as ``max_loaded_models`` allows, the default first)
        and start unloading idle ones if ``keep_alive`` says so."""
        self._changed = asyncio.Condition()
        limit = self._settings.max_loaded_models or len(self._models)
        for served in self._models[:limit]:
            await self._load(served)
        for served in self._models[limit:]:
            if served.engine is not None:  # built before, but no room to keep it
                await self._unload(served)
        if any(s.settings.keep_alive for s in self._models):
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    def begin_drain(self) -> None:
        """Stop admitting new work to every model and loading any; admitted work
        continues. Safe to call repeatedly, from the loop's thread."""
        self._draining = True
        for served in self._models:
            if served.engine is not None:
                served.engine.begin_drain()

    async def close(self, grace: float | None = None) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for served in self._models:
            if served.transition is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(served.transition)
        await asyncio.gather(*(s.engine.close(grace) for s in self._models if s.engine is not None))

    async def __aenter__(self) -> Registry:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- lookup and use -------------------------------------------------------------

    @property
    def default(self) -> str:
        return self._models[0].spec.name

    @property
    def slots(self) -> ComputeSlots:
        return self._slots

    def names(self) -> list[str]:
        """The served names, default first."""
        return [s.spec.name for s in self._models]

    def served_name(self, requested: str | None) -> str:
        """The served model ``requested`` names (None: the default); ``ModelNotFound``
        listing the served names, unless ``catch_all`` sends it to the default."""
        if requested is None:
            return self.default
        served = self._by_name.get(requested)
        if served is not None:
            return served.spec.name
        if self._settings.catch_all:
            return self.default
        raise ModelNotFound(
            requested,
            message=f"model {requested!r} is not served here; it serves "
            f"{', '.join(repr(n) for n in self.names())}",
        )

    def loaded_engine(self, name: str | None = None) -> Engine | None:
        """The engine of a loaded model, without a lease (for health and info)."""
        served = self._by_name[self.served_name(name)]
        return served.engine if served.state is LoadState.LOADED else None

    def engines(self) -> list[tuple[str, Engine]]:
        """The loaded models' engines, by served name."""
        return [
            (s.spec.name, s.engine)
            for s in self._models
            if s.engine is not None and s.state is LoadState.LOADED
        ]

    @contextlib.asynccontextmanager
    async def use(self, requested: str | None = None) -> AsyncIterator[Engine]:
        """The engine of model ``requested``, loaded if need be, kept loaded until
        the block ends."""
        served = self._by_name[self.served_name(requested)]
        engine = await self._lease(served)
        try:
            yield engine
        finally:
            served.leases -= 1
            served.last_used = _now()
            if served.leases == 0 and self._settings.max_loaded_models:
                # Only a load making room waits for a model to be let go; every
                # other request ends without touching the condition.
                await self._notify()

    async def _lease(self, served: _Served) -> Engine:
        try:
            async with asyncio.timeout(_load_wait()):
                while True:
                    if served.state is LoadState.LOADED and served.engine is not None:
                        served.leases += 1
                        return served.engine
                    if served.transition is not None:
                        await asyncio.shield(served.transition)
                    elif served.state is LoadState.UNLOADED:
                        if self._draining:
                            raise Unavailable("the server is shutting down")
                        await self._load(served)
        except TimeoutError:
            raise ModelLoading(served.spec.name, retry_after=5.0) from None

    # -- loading and unloading ---------------------------------------------------------

    async def _load(self, served: _Served) -> None:
        """Load ``served`` (making room first) as the one transition under way, and
        wait for it. The load is a task of its own: a waiter that gives up (its
        deadline, its client gone) does not cancel it for the others."""
        if served.transition is None and served.state is LoadState.UNLOADED:
            served.state = LoadState.LOADING
            task = asyncio.get_running_loop().create_task(self._load_now(served))
            # Retrieved here, so a load nobody waits for any more is not logged as
            # an exception never retrieved; each waiter re-raises it itself.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            served.transition = task
        if served.transition is not None:
            await asyncio.shield(served.transition)

    async def _load_now(self, served: _Served) -> None:
        try:
            await self._make_room(served)
            if served.engine is None:
                logger.info("loading model %s (%s)", served.spec.name, served.spec.ref)
                served.engine = await run_in_thread(
                    self._factory, served.settings, served.spec.name, self._slots
                )
            from embedloom.engine import EngineState

            if served.engine.state is EngineState.CREATED:
                await served.engine.start()
            served.state = LoadState.LOADED
            served.loads += 1
            served.last_used = _now()
        except BaseException:
            served.engine = None
            served.state = LoadState.UNLOADED
            raise
        finally:
            served.transition = None
            await self._notify()

    async def _make_room(self, loading: _Served) -> None:
        limit = self._settings.max_loaded_models
        if not limit:
            return
        assert self._changed is not None
        while True:
            loaded = [
                s for s in self._models if s is not loading and s.state is not LoadState.UNLOADED
            ]
            if len(loaded) < limit:
                return
            idle = [s for s in loaded if s.state is LoadState.LOADED and s.leases == 0]
            if idle:
                await self._unload(min(idle, key=lambda s: s.last_used))
                continue
            # Every loaded model is in use: wait for one to be let go.
            async with self._changed:
                await self._changed.wait()

    async def _unload(self, served: _Served) -> None:
        if served.transition is not None or served.engine is None or served.leases:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        served.transition = done
        served.state = LoadState.UNLOADING
        engine, served.engine = served.engine, None
        try:
            logger.info("unloading model %s", served.spec.name)
            await engine.close()
            served.unloads += 1
        finally:
            served.state = LoadState.UNLOADED
            served.transition = None
            done.set_result(None)
            await self._notify()

    async def unload_idle(self, now: float | None = None) -> list[str]:
        """Unload every model idle for its ``keep_alive`` (the reaper calls this; a
        test may with its own ``now``); returns the names unloaded."""
        now = _now() if now is None else now
        unloaded = []
        for served in self._models:
            keep_alive = served.settings.keep_alive
            if (
                keep_alive
                and served.state is LoadState.LOADED
                and served.leases == 0
                and now - served.last_used >= keep_alive
            ):
                await self._unload(served)
                unloaded.append(served.spec.name)
        return unloaded

    async def _reap(self) -> None:
        shortest = min(s.settings.keep_alive for s in self._models if s.settings.keep_alive)
        while True:
            await asyncio.sleep(max(0.5, shortest / 4))
            try:
                await self.unload_idle()
            except Exception:
                logger.exception("unloading an idle model failed")

    async def _notify(self) -> None:
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    # -- observation ----------------------------------------------------------------

    def statistics(self) -> RegistryStatistics:
        now = _now()
        return RegistryStatistics(
            models=tuple(
                ModelStatus(
                    name=s.spec.name,
                    names=s.names,
                    ref=s.spec.ref,
                    model_id=s.model_id,
                    state=s.state,
                    leases=s.leases,
                    loads=s.loads,
                    unloads=s.unloads,
                    idle_seconds=None if s.leases else now - s.last_used,
                )
                for s in self._models
            ),
            slots=self._slots.statistics(),
        )

    def settings_of(self, name: str) -> Settings:
        return self._by_name[self.served_name(name)].settings


def _resolved_names(spec: ModelSpec, settings: Settings, engine: Engine | None) -> tuple[str, ...]:
    """The names a model answers to besides its own: its id (first) and what it was given as
    (a hub id, a directory's name). Resolving fetches a missing hub model now, at
    start, so a wrong reference fails before the server takes requests."""
    if engine is not None:
        return engine.model_names
    from embedloom.store import ModelStore, resolve_model

    resolved = resolve_model(spec.ref, store=ModelStore.for_settings(settings))
    return (resolved.id, *resolved.names)


def _now() -> float:
    return loop_clock()()


def _load_wait() -> float:
    scope = current_scope()
    remaining = scope.remaining() if scope is not None else None
    return _DEFAULT_LOAD_WAIT if remaining is None else max(0.0, remaining)
