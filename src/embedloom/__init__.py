"""embedloom: serve sentence-embedding models with concurrency done right.

The library face: ``Embedder`` for scripts, ``Engine`` for async services,
``Settings`` for configuration, and one exception hierarchy rooted at
``EmbedloomError``.
"""

# Names resolve on first use, so ``import embedloom`` (and the CLI) loads
# neither numpy nor torch: a pre-forking server sets the thread variables those
# libraries read at import before anything imports them.
from __future__ import annotations

from typing import TYPE_CHECKING

from embedloom._lazy import lazy_exports
from embedloom._version import __version__

if TYPE_CHECKING:
    from embedloom.backends.base import Backend, TokenizedInput
    from embedloom.config import Settings, SettingsError
    from embedloom.embedder import Embedder
    from embedloom.engine import Embeddings, Engine, EngineState, EngineStatistics, ModelInfo
    from embedloom.errors import (
        AddressUnavailable,
        BackendError,
        DeadlineExceeded,
        EmbedloomError,
        InputTooLong,
        InvalidInput,
        ModelFetchFailed,
        ModelLoading,
        ModelNotFound,
        NotThisTask,
        Overloaded,
        TooManyInputs,
        Unavailable,
    )
    from embedloom.offload import run_in_thread
    from embedloom.registry import Registry
    from embedloom.scope import RequestScope, current_scope, request_scope

_EXPORTS = {
    "AddressUnavailable": "embedloom.errors",
    "Backend": "embedloom.backends.base",
    "BackendError": "embedloom.errors",
    "DeadlineExceeded": "embedloom.errors",
    "Embedder": "embedloom.embedder",
    "Embeddings": "embedloom.engine",
    "EmbedloomError": "embedloom.errors",
    "Engine": "embedloom.engine",
    "EngineState": "embedloom.engine",
    "EngineStatistics": "embedloom.engine",
    "InputTooLong": "embedloom.errors",
    "InvalidInput": "embedloom.errors",
    "ModelFetchFailed": "embedloom.errors",
    "ModelInfo": "embedloom.engine",
    "ModelLoading": "embedloom.errors",
    "ModelNotFound": "embedloom.errors",
    "NotThisTask": "embedloom.errors",
    "Overloaded": "embedloom.errors",
    "Registry": "embedloom.registry",
    "RequestScope": "embedloom.scope",
    "Settings": "embedloom.config",
    "SettingsError": "embedloom.config",
    "TokenizedInput": "embedloom.backends.base",
    "TooManyInputs": "embedloom.errors",
    "Unavailable": "embedloom.errors",
    "current_scope": "embedloom.scope",
    "request_scope": "embedloom.scope",
    "run_in_thread": "embedloom.offload",
}

__all__ = [
    "AddressUnavailable",
    "Backend",
    "BackendError",
    "DeadlineExceeded",
    "Embedder",
    "Embeddings",
    "EmbedloomError",
    "Engine",
    "EngineState",
    "EngineStatistics",
    "InputTooLong",
    "InvalidInput",
    "ModelFetchFailed",
    "ModelInfo",
    "ModelLoading",
    "ModelNotFound",
    "NotThisTask",
    "Overloaded",
    "Registry",
    "RequestScope",
    "Settings",
    "SettingsError",
    "TokenizedInput",
    "TooManyInputs",
    "Unavailable",
    "__version__",
    "current_scope",
    "request_scope",
    "run_in_thread",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted(__all__)
