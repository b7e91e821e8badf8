"""``/docs`` in a real browser with the network cut off: Swagger UI from the package.

Headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it) driven by
Playwright. Every request the page makes to anywhere but the server is refused
and recorded, so a CDN asset would show up here as a failure, not as a page that
happens to render on a machine with the internet.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess

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


def _chromium() -> str:
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


def test_docs_renders_every_route_offline_in_chromium(
    server: ServerProcess, tmp_path: Path
) -> None:
    from playwright.sync_api import Route, sync_playwright

    chromium = _chromium()
    paths = set(httpx.get(f"{server.url}/openapi.json", timeout=30).json()["paths"])
    outside: list[str] = []

    def only_the_server(route: Route) -> None:
        if route.request.url.startswith(server.url + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=_CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.route("**/*", only_the_server)
            page.goto(f"{server.url}/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=60_000)
            shown = set(page.locator(".opblock-summary-path").all_inner_texts())
            title = page.locator(".information-container .title").inner_text()
            page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
        finally:
            browser.close()
    assert outside == []
    assert shown == paths
    assert "embedloom" in title
    assert (tmp_path / "docs.png").stat().st_size > 10_000  # a page, not a blank
