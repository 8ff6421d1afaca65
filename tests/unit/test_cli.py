"""The `waitroom` command without a server: its tables, its JSON, its errors and exit codes.

The admin API is an ``httpx.MockTransport`` answering like the real one; the command runs through
Typer's CliRunner. The same commands against a running stack are in tests/e2e/test_cli_against_a_stack.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from waitroom_cli import main as cli
from waitroom_cli import render
from waitroom_cli.client import AdminClient, Exit, parse_sse

TOKEN = "cli-unit-token"
ROOM = {
    "room_id": "demo", "capacity": 5, "active": 5, "waiting": 12, "last_queue_no": 17, "estimated_wait_s": 95.0,
    "paused": False, "heartbeat_timeout_s": 20.0, "heartbeat_interval_s": 5.0, "target_url": None, "tickets_total": 17,
}  # fmt: skip


def text(renderable: Any, width: int = 140) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


class FakeApi:
    """Answers like the admin API: the rooms it holds, 401/403 for a missing or wrong token."""

    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, Any]] = {"demo": dict(ROOM)}
        self.calls: list[tuple[str, str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.calls.append((request.method, request.url.path, body))
        auth = request.headers.get("authorization", "")
        if not auth:
            return httpx.Response(401, json={"error": "unauthorized", "detail": "admin calls need a token"})
        if auth != f"Bearer {TOKEN}":
            return httpx.Response(403, json={"error": "forbidden", "detail": "the admin token is not valid"})
        parts = request.url.path.removeprefix("/v1/admin/").split("/")
        if parts == ["rooms"]:
            return httpx.Response(200, json={"rooms": list(self.rooms.values())})
        room_id = parts[1]
        if request.method == "PUT":
            if body.get("capacity", 0) > 10_000:
                return httpx.Response(422, json={"error": "invalid_config", "detail": "capacity is too large"})
            created = room_id not in self.rooms
            room = self.rooms.setdefault(room_id, {**ROOM, "room_id": room_id, "active": 0, "waiting": 0})
            room.update(body)
            return httpx.Response(201 if created else 200, json=room)
        if room_id not in self.rooms:
            return httpx.Response(404, json={"error": "room_not_found", "detail": f"no room {room_id!r}"})
        if parts[2:] == ["admit"]:
            return httpx.Response(202, json={"room_id": room_id, **body, "state": "accepted"})
        if parts[2:] == ["stats"]:
            return httpx.Response(200, json={"room_id": room_id, "snapshot": None, "windows_1m": [], "detail": "none"})
        return httpx.Response(200, json=self.rooms[room_id])


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setattr(
        cli, "AdminClient", lambda url, token: AdminClient(url, token, transport=httpx.MockTransport(fake))
    )
    monkeypatch.setenv("WAITROOM_ADMIN_TOKEN", TOKEN)
    return fake


@pytest.fixture
def run() -> Callable[..., Any]:
    runner = CliRunner()
    return lambda *args: runner.invoke(cli.app, list(args))


def test_seconds_read_as_people_say_them() -> None:
    assert [render.seconds(v) for v in (None, 0, 4.25, 59.94, 60, 95, 3600, 3725)] == [
        "–", "0 s", "4.2 s", "59.9 s", "1 min", "1 min 35 s", "1 h", "1 h 2 min",
    ]  # fmt: skip


def test_the_rooms_table_shows_the_configuration_and_in_watch_the_statistics_and_open_alerts() -> None:
    plain = text(render.rooms_table([ROOM]))
    assert "heartbeat timeout" in plain and "admitted/min" not in plain
    assert "demo" in plain and "1 min 35 s" in plain and "20 s" in plain
    live = {**ROOM, "paused": True, "admissions_1m": 7, "wait_p90_s": 30.5, "open_alerts": [{"rule": "waiting_high"}]}
    watched = text(render.rooms_table([live]))
    assert "admitted/min" in watched and "waiting_high" in watched and "paused" in watched and "30.5 s" in watched
    assert "No rooms" in text(render.rooms_table([]))


def test_the_stats_view_says_when_there_are_no_statistics_yet_and_lists_the_windows_when_there_are() -> None:
    assert "no statistics yet" in text(render.stats_view({"room_id": "demo", "snapshot": None}))
    snapshot = {"at": 0.0, "active": 5, "capacity": 5, "waiting": 3, "admissions_1m": 4, "admissions_5m": 9}
    snapshot |= {"joins_1m": 2, "joins_5m": 8, "wait_p50_s": 3.0, "wait_p90_s": 12.0, "estimated_wait_s": 40.0}
    window = {"start": 60.0, "joins": 2, "admissions": 4, "leaves": 1, "expiries_waiting": 0, "expiries_admitted": 1}
    shown = text(render.stats_view({"room_id": "demo", "snapshot": snapshot, "windows_1m": [window]}))
    assert "1970-01-01 00:00:00 UTC" in shown and "1970-01-01 00:01:00 UTC" in shown
    assert "3 s / 12 s / –" in shown and "40 s" in shown


def test_rooms_list_json_is_the_apis_answer_and_the_table_is_for_people(api: FakeApi, run: Any) -> None:
    as_json = run("rooms", "list", "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == {"rooms": [ROOM]}
    table = run("rooms", "list")
    assert table.exit_code == 0 and "demo" in table.stdout and "12" in table.stdout


def test_a_wrong_token_exits_3_with_the_apis_code_and_message(api: FakeApi, run: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("WAITROOM_ADMIN_TOKEN", "wrong")
    result = run("rooms", "list")
    assert result.exit_code == Exit.UNAUTHORIZED == 3
    assert "forbidden: the admin token is not valid (HTTP 403)" in result.stderr
    as_json = run("rooms", "show", "demo", "--json")
    assert as_json.exit_code == 3
    assert json.loads(as_json.stdout) == {"error": "forbidden", "detail": "the admin token is not valid", "status": 403}


def test_no_token_exits_3_before_calling_anything(api: FakeApi, run: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("WAITROOM_ADMIN_TOKEN")
    monkeypatch.delenv("WAITROOM_TICKETING_ADMIN_TOKEN", raising=False)
    result = run("rooms", "list")
    assert result.exit_code == 3 and "no_token: set WAITROOM_ADMIN_TOKEN" in result.stderr
    assert api.calls == []


def test_inside_a_ticketing_container_the_services_own_token_is_used(api: FakeApi, run: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("WAITROOM_ADMIN_TOKEN")
    monkeypatch.setenv("WAITROOM_TICKETING_ADMIN_TOKEN", TOKEN)
    assert run("rooms", "list").exit_code == 0


def test_create_makes_a_room_and_refuses_one_that_exists(api: FakeApi, run: Any) -> None:
    made = run("rooms", "create", "launch", "--capacity", "100", "--target-url", "https://shop.example/", "--json")
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["capacity"] == 100
    assert api.calls[-1] == ("PUT", "/v1/admin/rooms/launch", {"capacity": 100, "target_url": "https://shop.example/"})
    again = run("rooms", "create", "launch", "--capacity", "1")
    assert again.exit_code == Exit.EXISTS and "room_exists" in again.stderr


def test_set_pause_and_resume_change_only_what_they_say_and_never_create_a_room(api: FakeApi, run: Any) -> None:
    assert run("rooms", "set", "demo", "--capacity", "50", "--heartbeat-timeout", "30").exit_code == 0
    assert api.calls[-1] == ("PUT", "/v1/admin/rooms/demo", {"capacity": 50, "heartbeat_timeout_s": 30.0})
    assert run("rooms", "pause", "demo").exit_code == 0
    assert api.calls[-1][2] == {"paused": True}
    resumed = run("rooms", "resume", "demo", "--json")
    assert resumed.exit_code == 0 and json.loads(resumed.stdout)["paused"] is False
    typo = run("rooms", "set", "dmeo", "--capacity", "5")
    assert typo.exit_code == Exit.NOT_FOUND and "room_not_found: no room 'dmeo'" in typo.stderr
    assert all(method == "GET" for method, path, _ in api.calls if "dmeo" in path)
    nothing = run("rooms", "set", "demo")
    assert nothing.exit_code == Exit.USAGE and "give at least one of" in nothing.output


def test_a_refused_value_exits_5_with_the_apis_detail(api: FakeApi, run: Any) -> None:
    result = run("rooms", "set", "demo", "--capacity", "20000")
    assert result.exit_code == Exit.INVALID and "invalid_config: capacity is too large (HTTP 422)" in result.stderr


def test_admit_asks_first_unless_yes_and_sends_the_count(api: FakeApi, run: Any) -> None:
    refused = run("rooms", "admit", "demo", "3")
    assert refused.exit_code == Exit.USAGE and "--yes" in refused.output
    assert not any(path.endswith("/admit") for _, path, _ in api.calls)
    done = run("rooms", "admit", "demo", "3", "--above-capacity", "--yes", "--json")
    assert done.exit_code == 0
    assert api.calls[-1] == ("POST", "/v1/admin/rooms/demo/admit", {"count": 3, "above_capacity": True})
    assert run("rooms", "admit", "nope", "1", "-y").exit_code == Exit.NOT_FOUND


def test_an_unreachable_api_exits_6(monkeypatch: pytest.MonkeyPatch, run: Any) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(
        cli, "AdminClient", lambda url, token: AdminClient(url, token, transport=httpx.MockTransport(refuse))
    )
    monkeypatch.setenv("WAITROOM_ADMIN_TOKEN", TOKEN)
    result = run("rooms", "list", "--url", "http://127.0.0.1:9")
    assert result.exit_code == Exit.UNAVAILABLE and "unreachable: http://127.0.0.1:9" in result.stderr


def test_server_sent_events_are_parsed_into_events_and_keep_alives_skipped() -> None:
    lines: Iterator[str] = iter(
        [": keep-alive", "", "event: rooms", 'data: {"rooms": []}', "", "event: room", "data: {", "data: }", ""]
    )
    assert list(parse_sse(lines)) == [("rooms", {"rooms": []}), ("room", {})]
