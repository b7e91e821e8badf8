"""Model backends behind the ``Backend`` protocol."""

from embedloom.backends.base import Backend, BackendFactory, TokenizedInput

__all__ = ["Backend", "BackendFactory", "TokenizedInput"]
