"""The operator's console: ``/admin`` on the admin listener, a page over the admin API kept live by push.

- ``GET /admin``: the page (``console_static/``: plain modules, no build step; uPlot vendored in
  ``console_static/vendor`` for the charts). Its only scripts are this origin's files, each allowed
  by a per-response nonce; it connects to nothing but this origin.
- ``GET /v1/admin/console/events[?room=<id>]``: a Server-Sent Events stream behind the admin token
  like every admin call (the page sends it as a bearer with ``fetch()``, never in the URL). It
  pushes ``rooms`` (the table) and, for one room, ``history`` on connect (the last hour of
  statistics and the alert history), then ``room``, ``points`` and ``alerts`` as they change; it
  looks every :data:`PUSH_INTERVAL_S` and sends only what changed.
- :class:`ConsoleFeed` keeps what the read model does not: each room's statistics snapshots of the
  last hour (``room-stats``, read back from an hour ago at start) and its alerts (``alerts``, from
  the beginning: a breach still open from last week must show as open).

The controls call the admin API itself (``PUT /v1/admin/rooms/{id}``, ``POST .../admit``).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import secrets
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from waitroom_events.stats import RoomStats, ThresholdBreached, ThresholdRecovered
from waitroom_events.topics import TopicRegistry
from waitroom_platform.consume import Record
from waitroom_platform.runtime import Component
from waitroom_platform.settings import KafkaSettings
from waitroom_platform.tail import TopicTail
from waitroom_ticketing.api import ROOM_ID, ApiError, Services, Svc, _require_admin

#: how far back the charts reach
HISTORY_S = 3600.0
#: snapshots kept per room at most, whatever the stats service's interval (10 s: 360 an hour)
HISTORY_MAX_POINTS = 4000
#: alerts kept per room (breaches and recoveries)
ALERTS_KEPT = 100
#: how often a stream looks for changes
PUSH_INTERVAL_S = 1.0
#: a comment line this often keeps proxies from closing a quiet stream
KEEPALIVE_S = 15.0

PAGE_PATH = "/admin"
STATIC_PATH = "/admin/static"

Alert = ThresholdBreached | ThresholdRecovered


def static_dir() -> Path:
    return Path(str(importlib.resources.files("waitroom_ticketing"))) / "console_static"


def point(stats: RoomStats) -> list[float | None]:
    """One chart row: time, capacity, active, waiting, admissions and expiries in the last minute, the wait
    percentiles and the estimated wait (the order of ``POINT_FIELDS``)."""
    return [
        stats.at,
        stats.capacity,
        stats.active,
        stats.waiting,
        stats.admissions_1m,
        stats.expiries_waiting_1m + stats.expiries_admitted_1m,
        stats.wait_p50_s,
        stats.wait_p90_s,
        stats.wait_p99_s,
        stats.estimated_wait_s,
    ]


POINT_FIELDS = [
    "at", "capacity", "active", "waiting", "admissions_1m", "expiries_1m", "wait_p50_s", "wait_p90_s", "wait_p99_s",
    "estimated_wait_s",
]  # fmt: skip


def alert_view(alert: Alert) -> dict[str, Any]:
    view: dict[str, Any] = {
        "kind": "breached" if isinstance(alert, ThresholdBreached) else "recovered",
        "alert_id": alert.alert_id,
        "rule": alert.rule,
        "value": alert.value,
        "threshold": alert.threshold,
        "at": alert.at,
        "summary": alert.summary,
    }
    if isinstance(alert, ThresholdRecovered):
        view["breached_at"] = alert.breached_at
    return view


class ConsoleFeed(Component):
    """The last hour of statistics and the alert history of every room, for the console."""

    name = "console-feed"

    def __init__(self, kafka: KafkaSettings, topics: TopicRegistry, *, history_s: float = HISTORY_S) -> None:
        self.history_s = history_s
        self._history: dict[str, deque[RoomStats]] = {}
        #: per room the kept alerts, each with its number (1, 2, ...: a stream sends those after its last)
        self._alerts: dict[str, deque[tuple[int, Alert]]] = {}
        self._alerts_seen: dict[str, int] = {}
        self._open: dict[str, dict[str, ThresholdBreached]] = {}
        #: set when the service stops: open streams end
        self.closing = asyncio.Event()
        self._tails: list[TopicTail[Any]] = [
            TopicTail(kafka, topics.room_stats.name, RoomStats, self._on_stats, since_s=history_s),
            TopicTail(kafka, topics.alerts.name, (ThresholdBreached, ThresholdRecovered), self._on_alerts),
        ]

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        for tail in self._tails:
            await tail.start()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for tail in self._tails:
                group.create_task(tail.run())

    async def stop(self) -> None:
        # Open streams end first, so the admin listener's drain does not wait for them.
        self.closing.set()
        for tail in self._tails:
            await tail.stop()

    def ready(self) -> bool:
        return all(tail.ready() for tail in self._tails)

    # ---------------------------------------------------------------- folding

    def _on_stats(self, records: Sequence[tuple[Record, RoomStats]]) -> None:
        for _, stats in records:
            self.apply_stats(stats)

    def _on_alerts(self, records: Sequence[tuple[Record, Alert]]) -> None:
        for _, alert in records:
            self.apply_alert(alert)

    def apply_stats(self, stats: RoomStats) -> None:
        history = self._history.setdefault(stats.room_id, deque(maxlen=HISTORY_MAX_POINTS))
        if history and history[-1].at >= stats.at:
            return  # a replica's or a replay's older (or the same) snapshot, arriving late
        history.append(stats)
        while history[0].at < stats.at - self.history_s:
            history.popleft()

    def apply_alert(self, alert: Alert) -> None:
        alerts = self._alerts.setdefault(alert.room_id, deque(maxlen=ALERTS_KEPT))
        if any(seen.alert_id == alert.alert_id and type(seen) is type(alert) for _, seen in alerts):
            return  # the stats service may publish an alert again after a restart: same id
        number = self._alerts_seen[alert.room_id] = self._alerts_seen.get(alert.room_id, 0) + 1
        alerts.append((number, alert))
        open_alerts = self._open.setdefault(alert.room_id, {})
        if isinstance(alert, ThresholdBreached):
            open_alerts[alert.alert_id] = alert
        else:
            open_alerts.pop(alert.alert_id, None)

    # ---------------------------------------------------------------- queries

    def latest(self, room_id: str) -> RoomStats | None:
        history = self._history.get(room_id)
        return history[-1] if history else None

    def points(self, room_id: str, after: float = float("-inf")) -> list[list[float | None]]:
        return [point(s) for s in self._history.get(room_id, ()) if s.at > after]

    def alerts(self, room_id: str, after: int = 0) -> list[tuple[int, Alert]]:
        """The kept alerts numbered above ``after``, oldest first."""
        return [(n, alert) for n, alert in self._alerts.get(room_id, ()) if n > after]

    def open_alerts(self, room_id: str) -> list[ThresholdBreached]:
        return sorted(self._open.get(room_id, {}).values(), key=lambda a: a.at)


def room_row(svc: Services, feed: ConsoleFeed, room_id: str) -> dict[str, Any] | None:
    """A room as the console shows it: configuration, live counters, the latest statistics, open alerts."""
    room = svc.read_model.room(room_id)
    if room is None:
        return None
    latest = feed.latest(room_id)
    return {
        **svc.admin_room_view(room),
        "admissions_1m": None if latest is None else latest.admissions_1m,
        "wait_p90_s": None if latest is None else latest.wait_p90_s,
        "stats_at": None if latest is None else latest.at,
        "open_alerts": [alert_view(a) for a in feed.open_alerts(room_id)],
    }


def rooms_table(svc: Services, feed: ConsoleFeed) -> list[dict[str, Any]]:
    rooms = sorted(r.room_id for r in list(svc.read_model.rooms.values()) if r.exists)
    return [row for row in (room_row(svc, feed, room_id) for room_id in rooms) if row is not None]


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def console_stream(
    svc: Services, feed: ConsoleFeed, room_id: str | None, *, interval_s: float = PUSH_INTERVAL_S
) -> AsyncIterator[bytes]:
    """What one open console receives: everything once, then what changed, until the service stops."""
    sent_rooms: list[dict[str, Any]] | None = None
    sent_room: dict[str, Any] | None = None
    last_point_at = float("-inf")
    last_alert = 0
    quiet_s = 0.0
    if room_id is not None:
        points = feed.points(room_id)
        alerts = feed.alerts(room_id)
        yield sse(
            "history",
            {
                "room_id": room_id,
                "fields": POINT_FIELDS,
                "history_s": feed.history_s,
                "points": points,
                "alerts": [alert_view(a) for _, a in alerts],
            },
        )
        last_point_at = _time_of(points, last_point_at)
        last_alert = alerts[-1][0] if alerts else 0
    while not feed.closing.is_set():
        chunks: list[bytes] = []
        rooms = rooms_table(svc, feed)
        if rooms != sent_rooms:
            chunks.append(sse("rooms", {"rooms": rooms}))
            sent_rooms = rooms
        if room_id is not None:
            room = room_row(svc, feed, room_id)
            if room != sent_room:
                chunks.append(sse("room", {"room_id": room_id, "room": room}))
                sent_room = room
            points = feed.points(room_id, after=last_point_at)
            if points:
                chunks.append(sse("points", {"room_id": room_id, "points": points}))
                last_point_at = _time_of(points, last_point_at)
            alerts = feed.alerts(room_id, after=last_alert)
            if alerts:
                chunks.append(sse("alerts", {"room_id": room_id, "alerts": [alert_view(a) for _, a in alerts]}))
                last_alert = alerts[-1][0]
        if chunks:
            quiet_s = 0.0
            yield b"".join(chunks)
        elif quiet_s >= KEEPALIVE_S:
            quiet_s = 0.0
            yield b": keep-alive\n\n"
        try:
            await asyncio.wait_for(feed.closing.wait(), interval_s)
        except TimeoutError:
            quiet_s += interval_s


def _time_of(points: list[list[float | None]], default: float) -> float:
    at = points[-1][0] if points else None
    return default if at is None else at


def _csp(nonce: str) -> str:
    # Scripts: only this origin's files that carry the nonce. uPlot sizes its elements through the
    # CSSOM (element.style), which style-src does not restrict; no inline style sheet is needed.
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def render_console() -> tuple[str, dict[str, str]]:
    """The page and the headers it is served with (a fresh nonce each time)."""
    nonce = secrets.token_urlsafe(16)
    body = (static_dir() / "console.html").read_text().replace("__NONCE__", nonce).replace("__STATIC__", STATIC_PATH)
    headers = {
        "Content-Security-Policy": _csp(nonce),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return body, headers


def mount_console(app: FastAPI, feed: ConsoleFeed, *, interval_s: float = PUSH_INTERVAL_S) -> None:
    """``/admin``, its files and its event stream on the admin listener's ``app``."""
    app.mount(STATIC_PATH, StaticFiles(directory=static_dir()), name="console-static")
    router = APIRouter(tags=["operators"])

    @router.get(PAGE_PATH, include_in_schema=False)
    async def console_page() -> HTMLResponse:
        body, headers = render_console()
        return HTMLResponse(body, headers=headers)

    @router.get("/v1/admin/console/events", dependencies=[Depends(_require_admin)])
    async def console_events(
        svc: Svc, room: Annotated[str | None, Query(pattern=ROOM_ID, description="also stream this room")] = None
    ) -> StreamingResponse:
        """Server-Sent Events: ``rooms``; with ``room``: ``history``, then ``room``, ``points``, ``alerts``."""
        svc.require_ready()
        if room is not None and svc.read_model.room(room) is None:
            raise ApiError(404, "room_not_found", f"no room {room!r}")
        return StreamingResponse(
            console_stream(svc, feed, room, interval_s=interval_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    app.include_router(router)
