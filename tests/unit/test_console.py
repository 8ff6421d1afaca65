"""The operator's console without a broker: its page and files, its stream's frames, its feed's folding."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from waitroom_events.events import RoomConfigured, TicketIssued
from waitroom_events.stats import RoomStats, ThresholdBreached, ThresholdRecovered
from waitroom_events.topics import topic_registry
from waitroom_platform.settings import KafkaSettings
from waitroom_ticketing.api import Services, create_admin_app
from waitroom_ticketing.console import ConsoleFeed, console_stream, mount_console
from waitroom_ticketing.ratelimit import RateLimiter
from waitroom_ticketing.read_model import ReadModel
from waitroom_ticketing.tokens import EntryTokenSigner, TicketTokens

TOPICS = topic_registry("unit", 1)
TOKEN = "admin-token-for-console-tests"


def snapshot(room_id: str, at: float, **values: Any) -> RoomStats:
    fields: dict[str, Any] = {
        "capacity": 5, "active": 2, "waiting": 3, "paused": False, "window_start": at - 60,
        "joins_1m": 0, "admissions_1m": 4, "leaves_1m": 0, "expiries_waiting_1m": 1, "expiries_admitted_1m": 2,
        "joins_5m": 0, "admissions_5m": 0, "leaves_5m": 0, "expiries_waiting_5m": 0, "expiries_admitted_5m": 0,
    }  # fmt: skip
    return RoomStats(room_id=room_id, at=at, **{**fields, **values})


def breach(room_id: str, alert_id: str, at: float) -> ThresholdBreached:
    return ThresholdBreached(room_id=room_id, alert_id=alert_id, rule="waiting_high", value=9, threshold=4, at=at)


def recovery(room_id: str, alert_id: str, at: float) -> ThresholdRecovered:
    return ThresholdRecovered(
        room_id=room_id, alert_id=alert_id, rule="waiting_high", value=1, threshold=4, at=at, breached_at=at - 5
    )


def configured(room_id: str, capacity: int, paused: bool = False) -> RoomConfigured:
    return RoomConfigured(
        room_id=room_id, at=1.0, capacity=capacity, heartbeat_timeout_s=20, heartbeat_interval_s=5, target_url=None,
        paused=paused,
    )  # fmt: skip


@pytest.fixture
async def console() -> AsyncIterator[Any]:
    read_model = ReadModel(KafkaSettings(), TOPICS.room_events.name)
    read_model._tail.caught_up.set()
    services = Services(
        topics=TOPICS,
        publisher=None,  # type: ignore[arg-type] - nothing is published here
        read_model=read_model,
        tickets=TicketTokens("unit-ticket-secret"),
        signer=EntryTokenSigner.ephemeral("waitroom", 60),
        admin_token=TOKEN,
        limiter=RateLimiter(0, 1),
        join_wait_s=0.2,
        publish_timeout_s=1.0,
    )
    feed = ConsoleFeed(KafkaSettings(), TOPICS)
    app = create_admin_app(services, docs=False)
    mount_console(app, feed, interval_s=0.02)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as http:
        yield type("Console", (), {"http": http, "feed": feed, "services": services, "read_model": read_model})


async def test_the_page_carries_a_fresh_nonce_on_its_only_scripts_and_a_policy_allowing_nothing_else(
    console: Any,
) -> None:
    first, second = [await console.http.get("/admin") for _ in range(2)]
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/html")
    policy = first.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)  # type: ignore[union-attr]
    assert nonce not in second.text, "a nonce is used once"
    scripts = re.findall(r"<script[^>]*>", first.text)
    assert len(scripts) == 2 and all(f'nonce="{nonce}"' in s and "src=" in s for s in scripts), scripts
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "unsafe" not in policy
    assert first.headers["cache-control"] == "no-store"


async def test_the_page_and_its_files_are_served_without_the_token_and_the_charting_library_is_local(
    console: Any,
) -> None:
    page = (await console.http.get("/admin")).text
    for path in re.findall(r'(?:src|href)="(/admin/static/[^"]+)"', page):
        response = await console.http.get(path)
        assert response.status_code == 200, path
    library = await console.http.get("/admin/static/vendor/uPlot.iife.min.js")
    assert library.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert "uPlot" in library.text[:200]
    assert "MIT" in (await console.http.get("/admin/static/vendor/uPlot.LICENSE")).text


async def test_the_event_stream_needs_the_admin_token_and_a_known_room(console: Any) -> None:
    missing = await console.http.get("/v1/admin/console/events")
    assert (missing.status_code, missing.json()["error"]) == (401, "unauthorized")
    wrong = await console.http.get("/v1/admin/console/events", headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()["error"]) == (403, "forbidden")
    unknown = await console.http.get("/v1/admin/console/events?room=nope", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "room_not_found")
    bad = await console.http.get("/v1/admin/console/events?room=../x", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (bad.status_code, bad.json()["error"]) == (422, "invalid_request")


async def _frames(stream: AsyncIterator[bytes], n: int) -> list[tuple[str, Any]]:
    frames: list[tuple[str, Any]] = []
    while len(frames) < n:
        chunk = await asyncio.wait_for(anext(stream), 2)
        for block in chunk.decode().split("\n\n"):
            if block.startswith("event: "):
                head, data = block.split("\n", 1)
                frames.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return frames


async def test_a_room_stream_sends_its_history_first_then_only_what_changed_and_ends_when_the_feed_closes(
    console: Any,
) -> None:
    console.read_model.apply([configured("demo", 2)])
    console.feed.apply_stats(snapshot("demo", 100.0))
    console.feed.apply_alert(breach("demo", "a1", 100.0))
    stream = console_stream(console.services, console.feed, "demo", interval_s=0.01)

    history, rooms, room = await _frames(stream, 3)
    assert history[0] == "history"
    assert history[1]["points"] == [[100.0, 5, 2, 3, 4, 3, None, None, None, None]]
    assert [a["kind"] for a in history[1]["alerts"]] == ["breached"]
    assert rooms[0] == "rooms" and [r["room_id"] for r in rooms[1]["rooms"]] == ["demo"]
    assert rooms[1]["rooms"][0]["open_alerts"][0]["rule"] == "waiting_high"
    assert room[0] == "room" and room[1]["room"]["capacity"] == 2 and room[1]["room"]["admissions_1m"] == 4

    # A join: the room and the table change; a snapshot and a recovery arrive: only they are sent.
    console.read_model.apply([TicketIssued(room_id="demo", ticket_id="t1", queue_no=1, at=2.0)])
    changed = await _frames(stream, 2)
    assert {name for name, _ in changed} == {"rooms", "room"}
    console.feed.apply_stats(snapshot("demo", 110.0, waiting=1))
    console.feed.apply_alert(recovery("demo", "a1", 110.0))
    later = dict(await _frames(stream, 4))
    assert [p[0] for p in later["points"]["points"]] == [110.0]
    assert [a["kind"] for a in later["alerts"]["alerts"]] == ["recovered"]
    assert later["room"]["room"]["open_alerts"] == []

    await console.feed.stop()
    with pytest.raises(StopAsyncIteration):
        while True:
            await asyncio.wait_for(anext(stream), 2)


async def test_the_feed_keeps_an_hour_of_snapshots_in_order_and_each_alert_once() -> None:
    feed = ConsoleFeed(KafkaSettings(), TOPICS, history_s=3600)
    for at in (0.0, 1800.0, 3600.0, 3599.0, 3600.0, 4000.0):
        feed.apply_stats(snapshot("r", at))
    assert [p[0] for p in feed.points("r")] == [1800.0, 3600.0, 4000.0], "older than an hour, late or repeated: out"
    assert [p[0] for p in feed.points("r", after=3600.0)] == [4000.0]
    assert feed.latest("r") is not None and feed.latest("r").at == 4000.0  # type: ignore[union-attr]
    assert feed.latest("other") is None

    feed.apply_alert(breach("r", "a1", 10))
    feed.apply_alert(breach("r", "a1", 10))  # the stats service published it again after a restart
    feed.apply_alert(breach("r", "a2", 20))
    assert [a.alert_id for a in feed.open_alerts("r")] == ["a1", "a2"]
    feed.apply_alert(recovery("r", "a1", 30))
    assert [a.alert_id for a in feed.open_alerts("r")] == ["a2"]
    assert [(n, type(a).__name__) for n, a in feed.alerts("r")] == [
        (1, "ThresholdBreached"),
        (2, "ThresholdBreached"),
        (3, "ThresholdRecovered"),
    ]
    assert [n for n, _ in feed.alerts("r", after=2)] == [3]
