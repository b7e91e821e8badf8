"""The engine: admits requests, batches their inputs, returns each request its
vectors (``core``); its public types (``api``), units of work (``work``) and
statistics (``statistics``)."""

from embedloom.engine.api import Embeddings, EngineState, ModelInfo, Offload
from embedloom.engine.core import Engine
from embedloom.engine.statistics import EngineStatistics

__all__ = ["Embeddings", "Engine", "EngineState", "EngineStatistics", "ModelInfo", "Offload"]
