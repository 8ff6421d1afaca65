"""The waiting page on the ticket stream, in a real Chromium: admitted through the stream with no
polling or heartbeat request while the stream is up, back on the stream by itself after the API
restarts, branded and in the visitor's language.

The screenshots it takes are the docs' (``docs/images/waiting-page-*.png``): with
``WAITROOM_UPDATE_SCREENSHOTS=1`` they are written there, otherwise to the test's temporary folder.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser.conftest import CHROMIUM, CHROMIUM_ARGS
from playwright.async_api import Page, Request, async_playwright, expect
from support.http import bearer, create_room
from support.waiting import eventually

from waitroom_events.topics import TopicRegistry

pytestmark = pytest.mark.asyncio(loop_scope="session")

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
LOGO = b"""<svg xmlns="http://www.w3.org/2000/svg" width="120" height="40" viewBox="0 0 120 40">
<rect width="40" height="40" rx="9" fill="#c2410c"/><circle cx="20" cy="20" r="9" fill="#fff"/>
<text x="48" y="27" font-family="sans-serif" font-size="18" font-weight="700" fill="#431407">Lumen</text></svg>"""
BRANDING = {
    "title": "Lumen summer sale",
    "message": "Thanks for your patience: we let shoppers in a few at a time so checkout stays fast.",
    "logo_url": "https://shop.example/logo.svg",
    "accent_color": "#c2410c",
    "background_color": "#fff7ed",
    "text_color": "#431407",
}


def screenshots_dir(tmp_path: Path) -> Path:
    return DOCS_IMAGES if os.environ.get("WAITROOM_UPDATE_SCREENSHOTS") == "1" else tmp_path


class Requests:
    """The page's requests to the ticket calls, by kind."""

    def __init__(self, page: Page) -> None:
        self.polls: list[str] = []
        self.streams: list[str] = []
        page.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        path = request.url.split("?", 1)[0]
        if path.endswith("/events"):
            self.streams.append(path)
        elif "/tickets/" in path and request.method in ("GET", "POST"):
            self.polls.append(f"{request.method} {path}")


async def test_the_page_is_admitted_through_the_stream_without_polling_and_recovers_after_an_api_restart(
    topics: TopicRegistry, launch_ticketing: Any, tmp_path: Path
) -> None:
    (svc,) = launch_ticketing(topics)
    shots = screenshots_dir(tmp_path)
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(
            http,
            svc.admin_url,
            "shop",
            capacity=1,
            heartbeat_interval_s=1,
            heartbeat_timeout_s=30,
            target_url="https://shop.example/checkout",
            branding=BRANDING,
        )
        # Someone is in already: the page's visitor waits.
        holder = (await http.post(f"{svc.url}/v1/rooms/shop/tickets")).json()
        assert holder["state"] == "admitted"
        ahead = [(await http.post(f"{svc.url}/v1/rooms/shop/tickets")).json() for _ in range(4)]

        async def leave(ticket: dict[str, Any]) -> None:
            response = await http.delete(
                f"{svc.url}/v1/rooms/shop/tickets/{ticket['ticket_id']}", headers=bearer(ticket["ticket_token"])
            )
            assert response.status_code == 204

        problems: list[str] = []
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = await browser.new_context(viewport={"width": 1280, "height": 860}, locale="en-GB")
                await context.route(
                    "https://shop.example/logo.svg",
                    lambda route: route.fulfill(body=LOGO, content_type="image/svg+xml"),
                )
                page = await context.new_page()
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                requests = Requests(page)

                await page.goto(f"{svc.url}/wait/shop")
                await expect(page.locator("#title")).to_have_text(BRANDING["title"])
                await expect(page.locator("#waiting")).to_be_visible()
                await expect(page.locator("#position")).to_have_text("4")
                await expect(page.locator("#position")).to_have_attribute("aria-live", "polite")
                await expect(page.locator("#logo")).to_be_visible()
                assert requests.streams, "the page did not open the stream"

                # Three heartbeat intervals on the stream alone: no polling, no heartbeat call.
                await asyncio.sleep(3.5)
                assert requests.polls == []

                # The API restarts: the page polls while it is gone, and goes back to the stream.
                svc.stop()
                await expect(page.locator("#status")).to_contain_text("Connection trouble", timeout=15_000)
                svc = launch_ticketing.restart(svc)
                await expect(page.locator("#status")).to_have_text("", timeout=30_000)
                streams_before = len(requests.streams)
                await eventually(lambda: len(requests.streams) >= streams_before, 10, "the stream reopened")
                await asyncio.sleep(1.5)  # a poll in flight when the stream came back may still land
                requests.polls.clear()
                await asyncio.sleep(3.5)
                assert requests.polls == [], "polling went on once the stream was back"

                # Two ahead give up: the position and the progress move, pushed.
                for ticket in ahead[:2]:
                    await leave(ticket)
                await expect(page.locator("#position")).to_have_text("2")
                assert await page.locator("#progress").get_attribute("value") == "50"
                await page.screenshot(path=str(shots / "waiting-page-branded.png"))

                # The rest ahead and the one inside leave: the admission arrives through the stream.
                for ticket in [*ahead[2:], holder]:
                    await leave(ticket)
                await expect(page.locator("#admitted")).to_be_visible(timeout=5_000)
                href = await page.locator("#enter").get_attribute("href")
                assert href is not None and href.startswith("https://shop.example/checkout?waitroom_token=")
                assert requests.polls == [], "the admission came by polling, not by the stream"
                await page.screenshot(path=str(shots / "waiting-page-admitted.png"))

                # A phone, in German: the same room, its own ticket.
                phone = await browser.new_context(
                    viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, locale="de-DE"
                )
                await phone.route(
                    "https://shop.example/logo.svg",
                    lambda route: route.fulfill(body=LOGO, content_type="image/svg+xml"),
                )
                mobile = await phone.new_page()
                mobile.on("pageerror", lambda e: problems.append(str(e)))
                await mobile.goto(f"{svc.url}/wait/shop")
                await expect(mobile.locator("#waiting")).to_be_visible()
                await expect(mobile.locator("#ahead-label")).to_have_text("Personen vor Ihnen")
                await expect(mobile.locator("#position")).to_have_text("0")
                assert await mobile.evaluate("document.documentElement.lang") == "de"
                width = await mobile.evaluate("document.documentElement.scrollWidth")
                assert width <= 390, "the page scrolls sideways on a phone"
                await mobile.keyboard.press("Tab")
                await mobile.screenshot(path=str(shots / "waiting-page-phone.png"))
            finally:
                await browser.close()
    # the requests refused while the API was down are logged by Chromium; anything else is a fault
    faults = [p for p in problems if "Failed to load resource" not in p and "net::ERR_" not in p]
    assert faults == [], "the page logged errors (a CSP violation would show here)"
