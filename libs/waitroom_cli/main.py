"""``waitroom``: the operator's console command over the admin API.

    waitroom rooms list|show|create|set|pause|resume|admit|stats|watch [--url URL] [--json]

The admin token comes from ``WAITROOM_ADMIN_TOKEN`` (or, inside a ticketing container, its own
``WAITROOM_TICKETING_ADMIN_TOKEN``; never an argument: arguments show in the process list and the
shell's history); the admin listener's URL from ``--url`` or
``WAITROOM_ADMIN_URL`` (default ``http://127.0.0.1:8001``, the dev stack's). Tables for people,
``--json`` for scripts; a failure prints the API's error code and detail and exits with the code
of :class:`~waitroom_cli.client.Exit`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live

from waitroom_cli import render
from waitroom_cli.client import DEFAULT_URL, SERVICE_TOKEN_ENV, TOKEN_ENV, URL_ENV, AdminClient, ApiFailure, Exit

app = typer.Typer(
    name="waitroom",
    help="Operate waitroom: rooms, capacity, admissions, statistics. Token: $WAITROOM_ADMIN_TOKEN.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
rooms = typer.Typer(help="Create, inspect and operate rooms.", no_args_is_help=True)
app.add_typer(rooms, name="rooms")

out = Console()
err = Console(stderr=True)

Url = Annotated[str, typer.Option("--url", envvar=URL_ENV, help="the admin listener", show_default=True)]
Json = Annotated[bool, typer.Option("--json", help="print JSON for scripts instead of tables")]
RoomArg = Annotated[str, typer.Argument(help="the room id", show_default=False)]
Capacity = Annotated[int | None, typer.Option("--capacity", min=0, help="visitors admitted at once")]
Timeout = Annotated[
    float | None, typer.Option("--heartbeat-timeout", min=0.5, help="seconds of silence before a ticket expires")
]
Interval = Annotated[
    float | None, typer.Option("--heartbeat-interval", min=0.5, help="seconds between a visitor's heartbeats")
]
Target = Annotated[str | None, typer.Option("--target-url", help="where admitted visitors go (http(s) URL)")]


def token() -> str | None:
    return os.environ.get(TOKEN_ENV) or os.environ.get(SERVICE_TOKEN_ENV)


@contextmanager
def client(url: str, as_json: bool) -> Iterator[AdminClient]:
    """An admin client; an API failure ends the command with its message and exit code."""
    try:
        with AdminClient(url, token()) as admin:
            yield admin
    except ApiFailure as failure:
        fail(failure, as_json)


def fail(failure: ApiFailure, as_json: bool) -> None:
    if as_json:
        print(json.dumps(failure.as_dict()))  # noqa: T201 - the command's output
    status = f" (HTTP {failure.status})" if failure.status else ""
    detail = failure.detail if isinstance(failure.detail, str) else json.dumps(failure.detail)
    err.print(f"[bold red]error:[/] {failure.code}: {detail}{status}", highlight=False, markup=True)
    raise typer.Exit(int(failure.exit_code))


def emit(data: Any, as_json: bool, show: Callable[[], Any]) -> None:
    if as_json:
        print(json.dumps(data, indent=2))  # noqa: T201 - the command's output
    else:
        out.print(show())


def config_of(
    capacity: int | None, timeout: float | None, interval: float | None, target: str | None
) -> dict[str, Any]:
    values = {
        "capacity": capacity,
        "heartbeat_timeout_s": timeout,
        "heartbeat_interval_s": interval,
        "target_url": target,
    }
    return {key: value for key, value in values.items() if value is not None}


def applied(status: int, body: dict[str, Any], as_json: bool, what: str) -> None:
    if status == 202:
        # Published, but this replica's view did not show it within the API's wait.
        emit(body, as_json, lambda: f"{body['room_id']}: {what}: accepted, not visible yet (retry show)")
        return
    emit(body, as_json, lambda: render.room_details(body))


@rooms.command("list")
def list_rooms(url: Url = DEFAULT_URL, as_json: Json = False) -> None:
    """Every room with its configuration and live counters."""
    with client(url, as_json) as admin:
        found = admin.rooms()
    emit({"rooms": found}, as_json, lambda: render.rooms_table(found))


@rooms.command("show")
def show(room_id: RoomArg, url: Url = DEFAULT_URL, as_json: Json = False) -> None:
    """One room's configuration and live counters."""
    with client(url, as_json) as admin:
        room = admin.room(room_id)
    emit(room, as_json, lambda: render.room_details(room))


@rooms.command("create")
def create(
    room_id: RoomArg,
    capacity: Annotated[int, typer.Option("--capacity", min=0, help="visitors admitted at once")],
    heartbeat_timeout: Timeout = None,
    heartbeat_interval: Interval = None,
    target_url: Target = None,
    paused: Annotated[bool, typer.Option("--paused", help="create it paused: nobody is admitted yet")] = False,
    url: Url = DEFAULT_URL,
    as_json: Json = False,
) -> None:
    """Create a room (refused if it exists: change one with `set`)."""
    config = config_of(capacity, heartbeat_timeout, heartbeat_interval, target_url)
    if paused:
        config["paused"] = True
    with client(url, as_json) as admin:
        if admin.exists(room_id):
            raise ApiFailure("room_exists", f"room {room_id!r} exists; change it with: waitroom rooms set", Exit.EXISTS)
        status, body = admin.configure(room_id, config)
    applied(status, body, as_json, "created")


@rooms.command("set")
def set_config(
    room_id: RoomArg,
    capacity: Capacity = None,
    heartbeat_timeout: Timeout = None,
    heartbeat_interval: Interval = None,
    target_url: Target = None,
    url: Url = DEFAULT_URL,
    as_json: Json = False,
) -> None:
    """Change a room's capacity, heartbeat timeout or interval, or target URL."""
    config = config_of(capacity, heartbeat_timeout, heartbeat_interval, target_url)
    if not config:
        raise typer.BadParameter("give at least one of --capacity, --heartbeat-timeout/-interval, --target-url")
    _reconfigure(room_id, config, url, as_json, "changed")


@rooms.command("pause")
def pause(room_id: RoomArg, url: Url = DEFAULT_URL, as_json: Json = False) -> None:
    """Stop admitting (visitors keep joining and waiting)."""
    _reconfigure(room_id, {"paused": True}, url, as_json, "paused")


@rooms.command("resume")
def resume(room_id: RoomArg, url: Url = DEFAULT_URL, as_json: Json = False) -> None:
    """Admit again, up to the capacity."""
    _reconfigure(room_id, {"paused": False}, url, as_json, "resumed")


def _reconfigure(room_id: str, config: dict[str, Any], url: str, as_json: bool, what: str) -> None:
    with client(url, as_json) as admin:
        # PUT creates a missing room: a typo must not make one.
        if not admin.exists(room_id):
            raise ApiFailure("room_not_found", f"no room {room_id!r}", Exit.NOT_FOUND, 404)
        status, body = admin.configure(room_id, config)
    applied(status, body, as_json, what)


@rooms.command("admit")
def admit(
    room_id: RoomArg,
    count: Annotated[int, typer.Argument(min=1, max=100_000, help="how many of the next in line")] = 1,
    above_capacity: Annotated[bool, typer.Option("--above-capacity", help="even beyond the capacity")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for a confirmation")] = False,
    url: Url = DEFAULT_URL,
    as_json: Json = False,
) -> None:
    """Admit the next COUNT waiting now (asks first unless --yes)."""
    if not yes:
        if not sys.stdin.isatty():
            raise typer.BadParameter("admitting needs a confirmation: pass --yes when not at a terminal")
        beyond = ", even above its capacity" if above_capacity else " (within its capacity)"
        typer.confirm(f"Admit the next {count} waiting in {room_id} now{beyond}?", abort=True)
    with client(url, as_json) as admin:
        body = admin.admit(room_id, count, above_capacity)
    emit(body, as_json, lambda: f"{room_id}: admitting the next {count} (accepted)")


@rooms.command("stats")
def stats(room_id: RoomArg, url: Url = DEFAULT_URL, as_json: Json = False) -> None:
    """A room's latest statistics and its recent 1-minute windows."""
    with client(url, as_json) as admin:
        found = admin.stats(room_id)
    emit(found, as_json, lambda: render.stats_view(found))


@rooms.command("watch")
def watch(
    room_id: Annotated[str | None, typer.Argument(help="one room (default: the table of all)")] = None,
    url: Url = DEFAULT_URL,
    as_json: Json = False,
) -> None:
    """Redraw the rooms (or one room) live, as the API pushes changes; --json prints one event a line."""
    rooms_now: list[dict[str, Any]] = []
    room_now: dict[str, Any] | None = None
    with client(url, as_json) as admin:
        try:
            if as_json:
                for event, data in admin.events(room_id):
                    print(json.dumps({"event": event, **data}), flush=True)  # noqa: T201 - the command's output
            else:
                first = render.watch_view(url, rooms_now, room_now, room_id)
                with Live(first, console=out, auto_refresh=False) as live:
                    for event, data in admin.events(room_id):
                        if event == "rooms":
                            rooms_now = data["rooms"]
                        elif event == "room":
                            room_now = data["room"]
                        else:
                            continue
                        live.update(render.watch_view(url, rooms_now, room_now, room_id), refresh=True)
        except KeyboardInterrupt:
            return
        raise ApiFailure("stream_ended", "the API closed the stream (stopping?)", Exit.UNAVAILABLE)


def main() -> None:
    app(prog_name="waitroom")
