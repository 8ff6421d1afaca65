"""The operator's console (``/admin`` on the admin listener) in a real Chromium, against ticketing
and the stats service as processes: sign in, the rooms table, a room's live view, its controls.

The screenshots it takes are the operator guide's (``docs/images/console-*.png``): with
``WAITROOM_UPDATE_SCREENSHOTS=1`` they are written there, otherwise under the test's tmp folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser.conftest import CHROMIUM, CHROMIUM_ARGS
from e2e.conftest import Processes, processes, service_env  # noqa: F401 - the fixture
from playwright.async_api import Page, async_playwright, expect
from support.http import ADMIN_TOKEN, admin_headers, create_room

from waitroom_events.topics import TopicRegistry

pytestmark = pytest.mark.asyncio(loop_scope="session")

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
#: only the waiting-room rule, so the one alert the test expects is the only one there is
RULES = {
    "waiting_above": 4,
    "estimated_wait_above_s": None,
    "active_fraction_at_or_above": None,
    "stalled_after_s": None,
    "expiry_ratio_above": None,
}


def screenshots(tmp_path: Path) -> Path:
    return DOCS_IMAGES if os.environ.get("WAITROOM_UPDATE_SCREENSHOTS") == "1" else tmp_path


async def join(http: httpx.AsyncClient, url: str, room: str, n: int) -> None:
    for _ in range(n):
        response = await http.post(f"{url}/v1/rooms/{room}/tickets")
        assert response.status_code in (201, 202), response.text


async def tile(page: Page, name: str) -> Any:
    return page.locator(f"#t-{name}")


async def screenshot(page: Page, path: Path, **options: Any) -> None:
    """The page without the passing notice ("Saved.") over it."""
    await page.evaluate("document.getElementById('toast').hidden = true")
    await page.screenshot(path=str(path), **options)


async def test_an_operator_signs_in_follows_the_demo_room_live_and_changes_capacity_pauses_and_admits(
    topics: TopicRegistry,
    launch_ticketing: Any,
    processes: Processes,  # noqa: F811 - the fixture
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    shots = screenshots(tmp_path)
    stats_env = service_env(
        kafka_bootstrap,
        topics,
        WAITROOM_STATS_SNAPSHOT_INTERVAL_S="0.5",
        WAITROOM_STATS_DATA_DIR=str(tmp_path / "stats-data"),
        WAITROOM_STATS_ROOM_RULES=json.dumps({"demo": RULES}),
    )
    processes.start("stats", "waitroom_stats", stats_env)
    (svc,) = launch_ticketing(topics)
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(http, svc.admin_url, "demo", capacity=1, target_url="https://shop.example/checkout")
        await create_room(http, svc.admin_url, "launch", capacity=500)
        await join(http, svc.url, "demo", 4)

        problems: list[str] = []
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = await browser.new_context(viewport={"width": 1280, "height": 900})
                requests: list[str] = []
                page = await context.new_page()
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.on("request", lambda r: requests.append(r.url))

                await page.goto(f"{svc.admin_url}/admin")
                await page.fill("#token", "not-the-token")
                await page.click("#signin-form button")
                await expect(page.locator("#signin-error")).to_have_text("forbidden: the admin token is not valid")
                assert [p for p in problems if "403" not in p] == []
                problems.clear()  # Chromium logs the refused sign-in's 403 as an error: it was expected

                await page.fill("#token", ADMIN_TOKEN)
                await page.click("#signin-form button")
                row = page.locator("#rooms tr[data-room=demo]")
                await expect(row.locator("td.active")).to_have_text("1")
                await expect(row.locator("td.waiting")).to_have_text("3")
                await expect(page.locator("#rooms tr[data-room=launch]")).to_be_visible()

                # One room: its tiles follow the read model, its charts fill from the stats topic.
                await row.locator("a").click()
                await expect(page.locator("#room-id")).to_have_text("demo")
                await expect(await tile(page, "active")).to_have_text("1")
                await expect(page.locator("#chart-counts canvas")).to_have_count(1)

                # Capacity 3: two more are let in, and the active count follows.
                await page.fill("#cfg-capacity", "3")
                await page.click("#config-form button")
                await expect(await tile(page, "active")).to_have_text("3")
                await expect(await tile(page, "waiting")).to_have_text("1")

                # Paused, a larger capacity admits nobody, and new visitors only wait.
                await page.click("#pause")
                await expect(page.locator("#room-paused")).to_be_visible()
                await expect(page.locator("#pause")).to_have_text("Resume admissions")
                await page.fill("#cfg-capacity", "6")
                await page.click("#config-form button")
                await expect(await tile(page, "capacity")).to_have_text("6")
                await join(http, svc.url, "demo", 5)
                await expect(await tile(page, "waiting")).to_have_text("6")
                await expect(await tile(page, "active")).to_have_text("3")

                # Six waiting is above the rule's 4: the breach shows up, pushed from the alerts topic.
                breach = page.locator("#alerts li.breached")
                await expect(breach).to_contain_text("breach waiting_high", timeout=20_000)
                await expect(page.locator("#no-alerts")).to_be_hidden()
                await page.click("text=all rooms")
                await expect(row.locator("td").nth(8)).to_have_text("waiting_high")
                await expect(row.locator("td").nth(7)).to_have_text("paused")
                await screenshot(page, shots / "console-rooms.png")
                await row.locator("a").click()
                await expect(page.locator("#alerts li.breached")).to_have_count(1)

                # Admit 3 now, confirmed in the dialog: they are let in although the room is paused.
                await page.fill("#admit-count", "3")
                await page.click("#admit-form button")
                await expect(page.locator("#confirm")).to_be_visible()
                await expect(page.locator("#confirm-text")).to_contain_text("Admit the next 3 waiting in demo")
                await screenshot(page, shots / "console-admit.png")
                await page.click("#confirm-ok")
                await expect(await tile(page, "active")).to_have_text("6")
                await expect(await tile(page, "waiting")).to_have_text("3")
                admin_view = (await http.get(f"{svc.admin_url}/v1/admin/rooms/demo", headers=admin_headers())).json()
                assert (admin_view["active"], admin_view["waiting"], admin_view["paused"]) == (6, 3, True)

                # Three waiting is below the threshold and its hysteresis: the recovery follows.
                await expect(page.locator("#alerts li.recovered")).to_contain_text(
                    "recovered waiting_high", timeout=20_000
                )
                await page.wait_for_timeout(1500)  # a few more snapshots on the charts, for the picture
                await screenshot(page, shots / "console-room.png", full_page=True)

                # Resumed: back to the table, where the room no longer says paused.
                await page.click("#pause")
                await expect(page.locator("#room-paused")).to_be_hidden()
                await page.click("text=all rooms")
                await expect(row.locator("td").nth(7)).to_have_text("no")

                # On a phone: the same view, stacked.
                phone = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
                mobile = await phone.new_page()
                mobile.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                mobile.on("pageerror", lambda e: problems.append(str(e)))
                await mobile.goto(f"{svc.admin_url}/admin#/rooms/demo")
                await mobile.fill("#token", ADMIN_TOKEN)
                await mobile.click("#signin-form button")
                await expect(mobile.locator("#t-active")).to_have_text("6")
                await expect(mobile.locator("#chart-wait canvas")).to_have_count(1)
                width = await mobile.evaluate("document.documentElement.scrollWidth")
                assert width <= 390, f"the page is {width} px wide on a 390 px phone"
                await screenshot(mobile, shots / "console-phone.png")
                token_in_storage = await page.evaluate("sessionStorage.getItem('waitroom:admin-token')")
            finally:
                await browser.close()

    assert token_in_storage == ADMIN_TOKEN
    assert all(ADMIN_TOKEN not in url for url in requests), "the token must never be in a URL"
    assert all(url.startswith(svc.admin_url) for url in requests), [u for u in requests if svc.admin_url not in u]
    assert problems == [], "the console logged errors (a CSP violation would show here)"
