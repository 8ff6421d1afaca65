"""The dev command's ticketing entry: both listeners configured, the admin API on its own line."""

from __future__ import annotations

import re
from pathlib import Path

from waitroom_devtools.devstack import SERVICES, DevContext, running_lines


def _ctx() -> DevContext:
    return DevContext(Path("/tmp/dev"), "127.0.0.1:9092", "waitroom", 3, api_port=18000, admin_port=18001)


def test_the_dev_command_gives_ticketing_both_ports_and_prints_the_admin_api_on_its_own_line() -> None:
    ctx = _ctx()
    ticketing = next(s for s in SERVICES if s.name == "ticketing")
    env = ticketing.env(ctx)
    assert env["WAITROOM_TICKETING_PORT"] == "18000" and env["WAITROOM_TICKETING_ADMIN_PORT"] == "18001"
    lines = [line.strip() for line in running_lines(ctx, SERVICES)]
    assert "admin API  http://127.0.0.1:18001" in lines
    assert "API  http://127.0.0.1:18000" in lines
    assert "API docs (Swagger)  http://127.0.0.1:18001/docs" in lines, "the docs are on the admin listener"
    assert "operator console  http://127.0.0.1:18001/admin" in lines, "the console is on the admin listener"
    assert "demo waiting page  http://127.0.0.1:18000/wait/demo" in lines
    # One column of URLs: every value starts at the same offset.
    raw = running_lines(ctx, SERVICES)
    starts = {re.search(r"\S+  (?=\S)", line).end() for line in raw}  # type: ignore[union-attr]
    assert len(starts) == 1, raw
