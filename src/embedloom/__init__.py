"""embedloom: serve sentence-embedding models with concurrency done right.

The library face: ``Embedder`` for scripts, ``Engine`` for async services,
``Settings`` for configuration, and one exception hierarchy rooted at
``EmbedloomError``.
"""

from embedloom._version import __version__
from embedloom.backends.base import Backend, TokenizedInput
from embedloom.config import Settings, SettingsError
from embedloom.embedder import Embedder
from embedloom.engine import Embeddings, Engine, EngineState, EngineStatistics, ModelInfo
from embedloom.errors import (
    BackendError,
    EmbedloomError,
    InputTooLong,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    TooManyInputs,
    Unavailable,
)
from embedloom.offload import run_in_thread
from embedloom.scope import RequestScope, current_scope, request_scope

__all__ = [
    "Backend",
    "BackendError",
    "Embedder",
    "Embeddings",
    "EmbedloomError",
    "Engine",
    "EngineState",
    "EngineStatistics",
    "InputTooLong",
    "InvalidInput",
    "ModelInfo",
    "ModelNotFound",
    "Overloaded",
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
