"""The HTTP face of embedloom: OpenAI- and TEI-compatible routes over one engine."""

# Resolved on first use: ``embedloom.server.workers`` must be importable without
# loading numpy, torch or prometheus_client, which read their environment
# variables at import and must see what the pre-forking master sets.
from __future__ import annotations

from typing import TYPE_CHECKING

from embedloom._lazy import lazy_exports

if TYPE_CHECKING:
    from embedloom.server.app import create_app
    from embedloom.server.runner import serve
    from embedloom.server.workers import serve_workers

_EXPORTS = {
    "create_app": "embedloom.server.app",
    "serve": "embedloom.server.runner",
    "serve_workers": "embedloom.server.workers",
}

__all__ = ["create_app", "serve", "serve_workers"]


__getattr__ = lazy_exports(__name__, _EXPORTS)
