"""The API docs in a real Chromium: they render from the admin listener's own assets, nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from browser.conftest import CHROMIUM, CHROMIUM_ARGS
from playwright.async_api import Request, async_playwright, expect

from waitroom_events.topics import TopicRegistry

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_swagger_ui_renders_both_apis_with_every_request_to_the_admin_listener_and_no_csp_error(
    topics: TopicRegistry, launch_ticketing: Any, tmp_path: Path
) -> None:
    (svc,) = launch_ticketing(topics)
    admin_origin = urlsplit(svc.admin_url).netloc
    requested: list[str] = []
    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await (await browser.new_context()).new_page()

            def seen(request: Request) -> None:
                if not request.url.startswith(("data:", "blob:")):
                    requested.append(request.url)

            page.on("request", seen)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))

            await page.goto(f"{svc.admin_url}/docs")
            await expect(page.locator(".swagger-ui .info .title")).to_contain_text("waitroom admin")
            await expect(page.locator(".opblock-summary-path").first).to_be_visible()
            assert "/v1/admin/rooms" in await page.locator(".swagger-ui").inner_text()
            await expect(page.locator("button.authorize")).to_be_visible()
            await page.locator(".opblock-summary").first.click()
            await expect(page.locator("button.try-out__btn")).to_be_visible()
            await page.screenshot(path=str(tmp_path / "swagger.png"))

            await page.goto(f"{svc.admin_url}/docs/public")
            await expect(page.locator(".swagger-ui .info .title")).to_contain_text("waitroom")
            assert "/v1/rooms/{room_id}/tickets" in await page.locator(".swagger-ui").inner_text()
            await page.locator(".opblock-summary").first.click()
            await expect(page.locator(".opblock-body").first).to_be_visible()
            await expect(page.locator("button.try-out__btn")).to_have_count(0)  # read-only: not this origin's calls
        finally:
            await browser.close()

    assert requested, "the pages made requests"
    assert [u for u in requested if urlsplit(u).netloc != admin_origin] == [], "only the admin listener is asked"
    assert problems == [], "the pages logged errors (a CSP violation would show here)"
