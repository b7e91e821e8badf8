"""``/docs`` in a real browser with the network cut off: Swagger UI from the package.

Headless Chromium, every request to anywhere but the server refused and recorded
(tests/browser.py).
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.browser import offline_page
from tests.helpers import ServerProcess


def test_docs_renders_every_route_offline_in_chromium(
    server: ServerProcess, tmp_path: Path
) -> None:
    paths = set(httpx.get(f"{server.url}/openapi.json", timeout=30).json()["paths"])
    with offline_page(server.url) as opened:
        page = opened.page
        page.goto(f"{server.url}/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=60_000)
        shown = set(page.locator(".opblock-summary-path").all_inner_texts())
        title = page.locator(".information-container .title").inner_text()
        page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
        outside = opened.outside
    assert outside == []
    assert shown == paths
    assert "embedloom" in title
    assert (tmp_path / "docs.png").stat().st_size > 10_000  # a page, not a blank
