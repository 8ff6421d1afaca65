"""How the console command shows the admin API's answers to people (Rich tables); ``--json`` skips this."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

DASH = "–"


def seconds(value: float | None) -> str:
    """``12.3 s``, ``4 min 5 s``, ``2 h 3 min``; a dash for no value."""
    if value is None:
        return DASH
    if value < 60:
        return f"{round(value, 1):g} s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def number(value: Any) -> str:
    return DASH if value is None else str(value)


def clock(at: float | None) -> str:
    """A time of the API (epoch seconds) in UTC, which is what logs and alerts say."""
    if at is None:
        return DASH
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def paused(value: bool) -> Text:
    return Text("paused", style="bold yellow") if value else Text("no")


def rooms_table(rooms: list[dict[str, Any]]) -> RenderableType:
    """The rooms, one a row; the statistics columns appear when the rows carry them (``watch``)."""
    if not rooms:
        return Text("No rooms. Create one: waitroom rooms create <room> --capacity <n>", style="dim")
    live = any("admissions_1m" in room for room in rooms)
    table = Table(title=None, header_style="bold", pad_edge=False)
    table.add_column("room", overflow="fold")
    for name in ("capacity", "active", "waiting"):
        table.add_column(name, justify="right")
    if live:
        table.add_column("admitted/min", justify="right")
        table.add_column("wait p90", justify="right")
    table.add_column("est. wait", justify="right")
    table.add_column("paused")
    if live:
        table.add_column("alerts")
    else:
        table.add_column("heartbeat timeout", justify="right")
        table.add_column("target URL", overflow="fold")
    for room in rooms:
        cells: list[RenderableType] = [
            room["room_id"],
            number(room.get("capacity")),
            number(room.get("active")),
            number(room.get("waiting")),
        ]
        if live:
            cells += [number(room.get("admissions_1m")), seconds(room.get("wait_p90_s"))]
        cells += [seconds(room.get("estimated_wait_s")), paused(bool(room.get("paused")))]
        if live:
            rules = [alert["rule"] for alert in room.get("open_alerts") or []]
            cells.append(Text(", ".join(rules), style="bold red") if rules else Text(DASH))
        else:
            cells += [seconds(room.get("heartbeat_timeout_s")), room.get("target_url") or DASH]
        table.add_row(*cells)
    return table


def room_details(room: dict[str, Any]) -> RenderableType:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, RenderableType]] = [
        ("room", room["room_id"]),
        ("capacity", number(room.get("capacity"))),
        ("active", number(room.get("active"))),
        ("waiting", number(room.get("waiting"))),
        ("estimated wait", seconds(room.get("estimated_wait_s"))),
        ("paused", paused(bool(room.get("paused")))),
        ("heartbeat interval", seconds(room.get("heartbeat_interval_s"))),
        ("heartbeat timeout", seconds(room.get("heartbeat_timeout_s"))),
        ("target URL", room.get("target_url") or DASH),
        ("last queue number", number(room.get("last_queue_no"))),
        ("tickets", number(room.get("tickets_total"))),
    ]
    if "admissions_1m" in room:
        rows += [("admitted/min", number(room.get("admissions_1m"))), ("wait p90", seconds(room.get("wait_p90_s")))]
    if room.get("open_alerts"):
        rows.append(("open alerts", Text(", ".join(a["rule"] for a in room["open_alerts"]), style="bold red")))
    for label, value in rows:
        table.add_row(label, value)
    return table


def stats_view(stats: dict[str, Any]) -> RenderableType:
    """The latest snapshot and the recent 1-minute windows of ``GET .../stats``."""
    snapshot = stats.get("snapshot")
    if snapshot is None:
        return Text(f"{stats['room_id']}: {stats.get('detail') or 'no statistics yet'}", style="dim")
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    for label, value in (
        ("room", stats["room_id"]),
        ("at", clock(snapshot.get("at"))),
        ("active / capacity", f"{snapshot.get('active')} / {snapshot.get('capacity')}"),
        ("waiting", number(snapshot.get("waiting"))),
        ("admitted (1 min, 5 min)", f"{snapshot.get('admissions_1m')}, {snapshot.get('admissions_5m')}"),
        ("joined (1 min, 5 min)", f"{snapshot.get('joins_1m')}, {snapshot.get('joins_5m')}"),
        (
            "wait p50 / p90 / p99",
            " / ".join(seconds(snapshot.get(k)) for k in ("wait_p50_s", "wait_p90_s", "wait_p99_s")),
        ),
        ("estimated wait", seconds(snapshot.get("estimated_wait_s"))),
        ("admission rate", f"{snapshot.get('admission_rate_per_s', 0):.2f}/s"),
    ):
        head.add_row(label, value)
    windows = Table(title="closed 1-minute windows, newest first", header_style="bold", title_justify="left")
    windows.add_column("start")
    for name in ("joins", "admissions", "leaves", "expired waiting", "expired admitted"):
        windows.add_column(name, justify="right")
    for w in stats.get("windows_1m") or []:
        windows.add_row(
            clock(w["start"]),
            *(str(w[k]) for k in ("joins", "admissions", "leaves", "expiries_waiting", "expiries_admitted")),
        )
    return Group(head, Text(""), windows)


def watch_view(url: str, rooms: list[dict[str, Any]], room: dict[str, Any] | None, room_id: str | None) -> Group:
    parts: list[RenderableType] = [Text(f"waitroom at {url}, live (Ctrl-C to stop)", style="dim")]
    if room_id is not None:
        parts.append(room_details(room) if room is not None else Text(f"no room {room_id!r}", style="bold red"))
    else:
        parts.append(rooms_table(rooms))
    return Group(*parts)
