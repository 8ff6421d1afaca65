"""A ticketing container killed with SIGKILL under load, and started again.

Two ticketing containers (API + sequencer each) share the room's partitions. Clients join through
both; each join carries an Idempotency-Key and, when its replica does not answer, is retried on the
other with the same key (what a client behind a load balancer does). Mid-burst one container gets
``kill -9``: no shutdown, no commit, its open transaction left behind; the other takes over its
partitions, and the killed one is started again and takes joins. The log then says: every
acknowledged join was issued exactly once, the queue numbers are dense, and no more tickets were
admitted than the capacity. The container killed is the one whose sequencer owns the room's
partition (read from the containers' logs), so its transaction is the one cut off.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from uuid import uuid4

import httpx
import pytest
from aiokafka.partitioner import DefaultPartitioner
from support.http import create_room, settle, wait_room_visible
from support.kafka_log import read_topic
from support.waiting import eventually

from containers.conftest import Service, Stack
from waitroom_events.events import TicketAdmitted, TicketIssued

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOM = "crash"
#: partitions of every room topic (the stack's registry)
PARTITIONS = 3
CAPACITY = 3
WORKERS_PER_REPLICA = 4
JOINS_PER_WORKER = 40
KILL_AFTER_ACKS = 60
#: a join is acknowledged by one of these: 201 issued, 200 replayed, 202 accepted and pending
ACKED = (200, 201, 202)


def sequencer_of(replicas: list[Service], room_id: str) -> Service | None:
    """The replica whose sequencer owns the room's partition now, from its own log (partition_owned
    and partition_released events), once exactly one does."""
    partition = DefaultPartitioner()(room_id.encode(), list(range(PARTITIONS)), list(range(PARTITIONS)))
    owners = []
    for replica in replicas:
        owned = False
        for line in replica.logs().splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("partition") == partition and entry.get("event") in ("partition_owned", "partition_released"):
                owned = entry["event"] == "partition_owned"
        if owned:
            owners.append(replica)
    return owners[0] if len(owners) == 1 else None


async def test_a_ticketing_container_killed_under_load_and_restarted_issues_every_acknowledged_join_once(
    stack: Stack,
) -> None:
    assert stack.topics.commands.partitions == PARTITIONS
    replicas = [stack.start("ticketing", "ticketing-a"), stack.start("ticketing", "ticketing-b")]
    await stack.ready()
    acked: dict[str, dict[str, Any]] = {}
    over_capacity: list[dict[str, Any]] = []
    retried: list[str] = []
    down: set[str] = set()
    limits = httpx.Limits(max_connections=64)
    # A short connect timeout: a killed container's published port may drop the SYN instead of refusing it.
    timeout = httpx.Timeout(15, connect=2)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        await create_room(http, replicas[0].admin_url, ROOM, capacity=CAPACITY)
        for replica in replicas:
            await wait_room_visible(http, replica.url, ROOM)
        # The one to kill is the room's sequencer: its open transaction is what must not leak.
        a = await eventually(lambda: sequencer_of(replicas, ROOM), 30, f"one sequencer owning {ROOM}'s partition")
        b = next(replica for replica in replicas if replica is not a)

        async def join(first: Service, other: Service) -> None:
            key = f"kill-{uuid4().hex}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                replica = other if first.name in down else first
                try:
                    response = await http.post(
                        f"{replica.url}/v1/rooms/{ROOM}/tickets", headers={"Idempotency-Key": key}
                    )
                except httpx.TransportError:
                    # That replica is down: not acknowledged. Like a load balancer, send this join and
                    # the next ones to the other replica, the same key making a retry the same ticket.
                    down.add(replica.name)
                    retried.append(key)
                    continue
                if response.status_code in ACKED:
                    body = response.json()
                    acked[body["ticket_id"]] = body
                    return
                assert response.status_code == 503, response.text  # publishing slow while partitions move
                await asyncio.sleep(0.2)
            raise AssertionError(f"join {key} was never acknowledged")

        async def worker(first: Service, other: Service) -> None:
            for _ in range(JOINS_PER_WORKER):
                await join(first, other)

        async def kill_when_busy() -> None:
            while len(acked) < KILL_AFTER_ACKS:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(a.kill)

        sampling = True

        async def sample_capacity() -> None:
            while sampling:
                status = (await http.get(f"{b.url}/v1/rooms/{ROOM}")).json()
                if status["active"] > status["capacity"]:
                    over_capacity.append(status)
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample_capacity())
        workers = [worker(a, b) for _ in range(WORKERS_PER_REPLICA)] + [
            worker(b, a) for _ in range(WORKERS_PER_REPLICA)
        ]
        await asyncio.gather(kill_when_busy(), *workers)
        assert await asyncio.to_thread(a.exit_code) == 137, "ticketing-a was not killed with SIGKILL"

        # Its supervisor starts it again: same container, same settings; it takes joins again.
        await asyncio.to_thread(a.start_again)
        await a.ready()
        again = await asyncio.gather(*(http.post(f"{a.url}/v1/rooms/{ROOM}/tickets") for _ in range(20)))
        assert {r.status_code for r in again} <= {201, 202}, [r.text for r in again if r.status_code not in ACKED]
        acked.update({body["ticket_id"]: body for body in (r.json() for r in again)})
        settled = await asyncio.gather(*(settle(http, b.url, t, t["ticket_token"], timeout=60) for t in acked.values()))
        sampling = False
        await sampler

    total = WORKERS_PER_REPLICA * 2 * JOINS_PER_WORKER + 20
    assert len(acked) == total, f"{len(acked)} of {total} joins acknowledged"
    assert retried, "no join met the killed container: the kill came too late to test anything"
    events = await read_topic(stack.kafka.bootstrap, stack.topics.room_events.name)
    issued = [e for e in events if isinstance(e, TicketIssued) and e.room_id == ROOM]
    admitted = [e for e in events if isinstance(e, TicketAdmitted) and e.room_id == ROOM]
    issued_ids = [e.ticket_id for e in issued]
    assert len(issued_ids) == len(set(issued_ids)), "a join was issued twice"
    assert [e.queue_no for e in issued] == list(range(1, len(issued) + 1)), "queue numbers are not dense"
    assert set(acked) <= set(issued_ids), "an acknowledged join was lost"
    number_of = {e.ticket_id: e.queue_no for e in issued}
    assert all(t["queue_no"] == number_of[t["ticket_id"]] for t in settled), "the API and the log disagree"
    assert len({e.ticket_id for e in admitted}) == len(admitted) == CAPACITY, "capacity not held"
    assert {number_of[e.ticket_id] for e in admitted} == set(range(1, CAPACITY + 1)), "admission not in order"
    assert over_capacity == []
