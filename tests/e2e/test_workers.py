"""WAITROOM_TICKETING_WORKERS=2: two API processes share the public port; a dead worker comes back;
stopping the first stops them all."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import httpx
import pytest
from support.http import create_room
from support.waiting import eventually

from waitroom_events.topics import TopicRegistry

pytestmark = pytest.mark.asyncio(loop_scope="session")


def worker_pids(log_text: str) -> list[int]:
    pids = []
    for line in log_text.splitlines():
        if '"worker_started"' in line:
            pids.append(json.loads(line)["pid"])
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_two_workers_share_the_port_and_a_killed_worker_is_started_again(
    topics: TopicRegistry, launch_ticketing: Any
) -> None:
    (svc,) = launch_ticketing(topics, WAITROOM_TICKETING_WORKERS="2")
    first = await eventually(lambda: worker_pids(svc.log_path.read_text()), 30, "a worker_started line")
    worker = first[0]

    async def joins_on_fresh_connections(n: int) -> list[int]:
        codes = []
        for _ in range(n):
            async with httpx.AsyncClient(timeout=30) as http:  # a new connection each: the kernel spreads them
                codes.append((await http.post(f"{svc.url}/v1/rooms/pair/tickets")).status_code)
        return codes

    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(http, svc.admin_url, "pair", capacity=5)

    # the worker's read model must see the room too before it can answer for it
    async def both_see_the_room() -> bool:
        return all(code in (201, 202) for code in await joins_on_fresh_connections(10))

    await eventually(both_see_the_room, 30, "joins answered by both workers")
    os.kill(worker, signal.SIGKILL)
    again = await eventually(
        lambda: [p for p in worker_pids(svc.log_path.read_text()) if p != worker], 30, "the worker started again"
    )
    await eventually(both_see_the_room, 30, "joins answered after the restart")

    svc.stop()
    await eventually(lambda: not alive(again[0]), 20, "the worker stopped with worker 0")
