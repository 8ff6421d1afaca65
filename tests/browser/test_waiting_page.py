"""The visitor's waiting page in a real Chromium: queue, reload, leave, admission, entry token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from browser.conftest import CHROMIUM, CHROMIUM_ARGS
from playwright.async_api import async_playwright, expect
from support.http import create_room

from waitroom_events.topics import TopicRegistry

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_visitor_waits_on_the_page_keeps_the_place_on_reload_and_enters_when_the_one_ahead_leaves(
    topics: TopicRegistry, launch_ticketing: Any, tmp_path: Path
) -> None:
    (svc,) = launch_ticketing(topics)
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(
            http, svc.admin_url, "shop", capacity=1, heartbeat_interval_s=1, target_url="https://shop.example/checkout"
        )
        missing = await http.get(f"{svc.url}/wait/no-such-room")
        assert missing.status_code == 404 and missing.json()["error"] == "room_not_found"

    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages = []
            for _ in range(2):
                page = await (await browser.new_context()).new_page()
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                pages.append(page)
            first, second = pages

            await first.goto(f"{svc.url}/wait/shop")
            await expect(first.locator("#admitted")).to_be_visible()
            await expect(first.locator("#admitted-no")).to_have_text("1")

            await second.goto(f"{svc.url}/wait/shop")
            await expect(second.locator("#waiting")).to_be_visible()
            await expect(second.locator("#queue-no")).to_have_text("2")
            await expect(second.locator("#position")).to_have_text("0")
            await second.reload()
            await expect(second.locator("#queue-no")).to_have_text("2")  # the same place, not a new ticket
            await second.screenshot(path=str(tmp_path / "waiting.png"))

            await first.click("#leave")
            await expect(first.locator("#ended-text")).to_have_text("You left the queue.")
            await expect(second.locator("#admitted")).to_be_visible(timeout=10_000)
            await second.screenshot(path=str(tmp_path / "admitted.png"))

            href = await second.locator("#enter").get_attribute("href")
            stored = json.loads(await second.evaluate("sessionStorage.getItem('waitroom:shop')"))
        finally:
            await browser.close()

    assert href is not None and href.startswith("https://shop.example/checkout?waitroom_token=")
    token = href.split("waitroom_token=", 1)[1]
    key = jwt.PyJWKClient(f"{svc.url}/.well-known/jwks.json").get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience="shop")
    assert claims["sub"] == stored["ticket_id"]
    assert problems == [], "the page logged errors (a CSP violation would show here)"
