"""The `waitroom` command against ticketing as a process on a real broker: a sale's operations,
parseable JSON, a live watch, a wrong token.

Most steps run the command in this process (Typer's CliRunner: the same code, without a Python
start-up per step on a busy machine); the first, the watch and the wrong token run it as the console
script does, ``python -m waitroom_cli`` in a process of its own, and read its real stdout and exit code.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from support.http import ADMIN_TOKEN
from support.waiting import eventually
from typer.testing import CliRunner, Result

from waitroom_cli.main import app
from waitroom_events.topics import TopicRegistry

pytestmark = pytest.mark.asyncio(loop_scope="session")


def command(admin_url: str, *args: str, token: str = ADMIN_TOKEN) -> subprocess.CompletedProcess[str]:
    """``waitroom ARGS`` as its own process."""
    env = {**os.environ, "WAITROOM_ADMIN_TOKEN": token, "WAITROOM_ADMIN_URL": admin_url, "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, "-m", "waitroom_cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def waitroom(admin_url: str, *args: str, token: str = ADMIN_TOKEN) -> Result:
    """``waitroom ARGS`` in this process."""
    env = {"WAITROOM_ADMIN_TOKEN": token, "WAITROOM_ADMIN_URL": admin_url, "COLUMNS": "160"}
    return CliRunner().invoke(app, list(args), env=env)


def as_json(admin_url: str, *args: str) -> Any:
    done = waitroom(admin_url, *args, "--json")
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


async def test_an_operator_runs_a_sale_from_the_command_line(topics: TopicRegistry, launch_ticketing: Any) -> None:
    (svc,) = launch_ticketing(topics)
    admin = svc.admin_url

    made = command(
        admin, "rooms", "create", "sale", "--capacity", "2", "--target-url", "https://shop.example/", "--json"
    )
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert (created["room_id"], created["capacity"], created["target_url"]) == ("sale", 2, "https://shop.example/")
    exists = waitroom(admin, "rooms", "create", "sale", "--capacity", "2")
    assert exists.exit_code == 7 and "room_exists" in exists.stderr

    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(4):
            assert (await http.post(f"{svc.url}/v1/rooms/sale/tickets")).status_code in (201, 202)
    shown = as_json(admin, "rooms", "show", "sale")
    assert (shown["active"], shown["waiting"]) == (2, 2)
    table = waitroom(admin, "rooms", "list")
    assert table.exit_code == 0 and "sale" in table.stdout and "https://shop.example/" in table.stdout

    # Paused, a larger capacity lets nobody in; a manual admit does.
    assert as_json(admin, "rooms", "pause", "sale")["paused"] is True
    assert as_json(admin, "rooms", "set", "sale", "--capacity", "4")["active"] == 2
    assert as_json(admin, "rooms", "admit", "sale", "1", "--yes")["state"] == "accepted"
    await eventually(lambda: as_json(admin, "rooms", "show", "sale")["active"] == 3, timeout=15)
    assert as_json(admin, "rooms", "resume", "sale")["paused"] is False
    await eventually(lambda: as_json(admin, "rooms", "show", "sale")["active"] == 4, 15, "the free place filled")

    stats = as_json(admin, "rooms", "stats", "sale")
    assert stats["room_id"] == "sale" and "windows_1m" in stats

    # watch --json: one event a line, pushed by the API (the history first for one room).
    watching = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "waitroom_cli",
        *("rooms", "watch", "sale", "--json"),
        env={**os.environ, "WAITROOM_ADMIN_TOKEN": ADMIN_TOKEN, "WAITROOM_ADMIN_URL": admin},
        stdout=asyncio.subprocess.PIPE,
    )
    assert watching.stdout is not None
    try:
        events = [json.loads(await asyncio.wait_for(watching.stdout.readline(), 30)) for _ in range(3)]
    finally:
        watching.terminate()
        await watching.wait()
    assert [e["event"] for e in events] == ["history", "rooms", "room"]
    assert events[2]["room"]["active"] == 4

    missing = waitroom(admin, "rooms", "show", "nope")
    assert missing.exit_code == 4 and "room_not_found: no room 'nope'" in missing.stderr
    wrong = command(admin, "rooms", "list", token="not-the-admin-token")
    assert wrong.returncode == 3
    assert "forbidden: the admin token is not valid (HTTP 403)" in wrong.stderr
    wrong_json = waitroom(admin, "rooms", "list", "--json", token="not-the-admin-token")
    assert json.loads(wrong_json.stdout)["error"] == "forbidden"
    public = waitroom(svc.url, "rooms", "list")
    assert public.exit_code == 4, "the public listener has no admin API"

    # An open stream does not hold the service's stop: it ends first, and the watch says so.
    watching = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "waitroom_cli",
        *("rooms", "watch", "--json"),
        env={**os.environ, "WAITROOM_ADMIN_TOKEN": ADMIN_TOKEN, "WAITROOM_ADMIN_URL": admin},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert watching.stdout is not None and watching.stderr is not None
    assert json.loads(await asyncio.wait_for(watching.stdout.readline(), 30))["event"] == "rooms"
    started = time.monotonic()
    assert await asyncio.to_thread(svc.stop) == 0
    stop_s = time.monotonic() - started
    assert await asyncio.wait_for(watching.wait(), 10) == 6
    assert "stream_ended" in (await watching.stderr.read()).decode()
    assert stop_s < 8, f"ticketing took {stop_s:.1f} s to stop with a console stream open"
