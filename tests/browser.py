"""Headless Chromium for the page tests, cut off from everything but the server.

Debian's ``chromium`` (``.ci/run`` installs it) driven by Playwright. Every
request a page makes to anywhere but the server is refused and recorded, so a
CDN asset shows up as a failure, not as a page that happens to render on a
machine with the internet. Without Chromium or Playwright the tests skip,
except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

# The flags a sandboxed, offline, root CI machine needs: no sandbox (root), no
# GPU, and none of Chromium's own background traffic (updates, sync, probes).
_CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Where a page test keeps its screenshot for a person to look at: .ci/run points
# this into the checkout for CI to keep; a developer's run keeps it in the temp dir.
ARTIFACTS = Path(
    os.environ.get("EMBEDLOOM_TEST_ARTIFACTS")
    or Path(tempfile.gettempdir()) / "embedloom-test-artifacts"
)


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = "Debian's chromium is not installed (apt-get install chromium)" if not path else ""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "playwright is not installed (the dev extra)"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}; CI must run the browser test")
        pytest.skip(missing)
    assert path is not None
    return path


@dataclass
class OfflinePage:
    page: Page
    outside: list[str] = field(default_factory=list)  # requests refused: not the server's
    errors: list[str] = field(default_factory=list)  # the page's script errors


@contextmanager
def offline_page(server_url: str) -> Iterator[OfflinePage]:
    """A new page in headless Chromium that can reach ``server_url`` and nothing else."""
    from playwright.sync_api import Route, sync_playwright

    executable = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=_CHROMIUM_FLAGS)
        try:
            opened = OfflinePage(browser.new_page(viewport={"width": 1400, "height": 1000}))

            def only_the_server(route: Route) -> None:
                if route.request.url.startswith(server_url + "/"):
                    route.continue_()
                else:
                    opened.outside.append(route.request.url)
                    route.abort("internetdisconnected")

            opened.page.route("**/*", only_the_server)
            opened.page.on("pageerror", lambda error: opened.errors.append(str(error)))
            yield opened
        finally:
            browser.close()
