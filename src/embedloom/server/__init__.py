"""The HTTP face of embedloom: OpenAI- and TEI-compatible routes over one engine."""

from embedloom.server.app import create_app
from embedloom.server.runner import serve

__all__ = ["create_app", "serve"]
