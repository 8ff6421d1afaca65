"""Sequencer snapshots end to end: kill -9 with snapshots on, recovery from a snapshot, and a
snapshot corrupted on purpose, which must send recovery back to the log, never to a wrong state."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from e2e.conftest import TicketingProcess
from support.http import admin_headers, bearer, create_room, settle, wait_room_visible
from support.kafka_log import read_topic
from support.waiting import eventually

from waitroom_devtools.procs import ServiceProcess
from waitroom_events.events import TicketAdmitted, TicketIssued
from waitroom_events.topics import TopicRegistry
from waitroom_platform.consume import read_to_end
from waitroom_platform.kafka import make_consumer, make_reader
from waitroom_platform.settings import KafkaSettings

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: snapshots often enough that a short test has several
SNAPSHOTS = {"WAITROOM_TICKETING_SNAPSHOT_EVERY_EVENTS": "20", "WAITROOM_TICKETING_SNAPSHOT_EVERY_S": "1"}


def log_events(proc: ServiceProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if f'"{event}"' in line:
            entry = json.loads(line)
            if entry.get("event") == event:
                found.append(entry)
    return found


async def join(http: httpx.AsyncClient, base: str, room_id: str) -> dict[str, Any]:
    response = await http.post(f"{base}/v1/rooms/{room_id}/tickets")
    assert response.status_code in (201, 202), response.text
    body: dict[str, Any] = response.json()
    return body


def check_log(events: list[Any], room_id: str, acked: set[str], capacity: int) -> list[TicketIssued]:
    """The exactly-once checks on the log itself: no join twice, dense numbers, none acknowledged lost."""
    issued = [e for e in events if isinstance(e, TicketIssued) and e.room_id == room_id]
    admitted = [e for e in events if isinstance(e, TicketAdmitted) and e.room_id == room_id]
    ids = [e.ticket_id for e in issued]
    assert len(ids) == len(set(ids)), "a join was applied twice"
    assert [e.queue_no for e in issued] == list(range(1, len(issued) + 1)), "queue numbers are not dense"
    assert acked <= set(ids), "an acknowledged join was lost"
    assert len({e.ticket_id for e in admitted}) == len(admitted) == capacity, "capacity exceeded"
    return issued


async def test_a_sequencer_killed_with_snapshots_on_loses_no_join_applies_none_twice_and_recovers_from_a_snapshot(
    topics: TopicRegistry, launch_ticketing: Any, kafka_bootstrap: str
) -> None:
    a, b = launch_ticketing(topics, n=2, **SNAPSHOTS)
    acked: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(http, a.admin_url, "snap-crash", capacity=3)
        await wait_room_visible(http, b.url, "snap-crash")

        async def joiner(base: str, count: int) -> None:
            for _ in range(count):
                try:
                    response = await http.post(f"{base}/v1/rooms/snap-crash/tickets")
                except httpx.HTTPError:
                    continue  # the process is down: not acknowledged
                if response.status_code in (201, 202):
                    acked[response.json()["ticket_id"]] = response.json()

        async def crash_when_snapshotted() -> None:
            await eventually(lambda: log_events(a, "snapshot_written") or log_events(b, "snapshot_written"), timeout=60)
            while len(acked) < 80:
                await asyncio.sleep(0.01)
            a.kill()  # kill -9 mid-burst: an open transaction, perhaps half a snapshot

        await asyncio.gather(crash_when_snapshotted(), *(joiner(base, 50) for base in (a.url, b.url) for _ in range(4)))
        restarted = launch_ticketing.restart(a)
        await asyncio.gather(*(join(http, restarted.url, "snap-crash") for _ in range(20)))
        tickets = await asyncio.gather(*(settle(http, b.url, t, t["ticket_token"], timeout=60) for t in acked.values()))

    assert len(tickets) == len(acked) > 80
    check_log(await read_topic(kafka_bootstrap, topics.room_events.name), "snap-crash", set(acked), capacity=3)
    found = [entry for proc in (b, restarted) for entry in log_events(proc, "snapshot_found")]
    assert any(entry["snapshot"] is not None for entry in found), "no owner started from a snapshot"


async def room_partition_end(bootstrap: str, topic: str, partitions: int) -> tuple[int, int]:
    """The one partition of ``topic`` that holds records (the test's only room) and its end offset."""
    reader = make_reader(KafkaSettings(bootstrap_servers=bootstrap))
    await reader.start()
    try:
        ends = [await read_to_end(reader, TopicPartition(topic, p), lambda _: None, None) for p in range(partitions)]
    finally:
        await reader.stop()
    (held,) = [(partition, end) for partition, end in enumerate(ends) if end > 0]
    return held


async def corrupt_every_snapshot(bootstrap: str, topic: str, partitions: int) -> int:
    """Overwrite every chunk of every snapshot with bytes of the right shape and the wrong content."""
    latest: dict[bytes, bytes] = {}
    reader = make_reader(KafkaSettings(bootstrap_servers=bootstrap))
    await reader.start()
    try:
        for partition in range(partitions):
            await read_to_end(reader, TopicPartition(topic, partition), lambda r: latest.__setitem__(r.key, r.value))
    finally:
        await reader.stop()
    chunks = {key: value for key, value in latest.items() if not key.endswith(b"/m")}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in chunks.items():
            partition = int(key.split(b"/")[0])
            damaged = value[:-8] + bytes(8) if len(value) > 40 else value + b"\x00"
            await producer.send_and_wait(topic, damaged, key=key, partition=partition)
    finally:
        await producer.stop()
    return len(chunks)


async def test_a_restart_resumes_from_a_snapshot_and_a_corrupted_snapshot_falls_back_to_the_log(
    topics: TopicRegistry, launch_ticketing: Any, kafka_bootstrap: str
) -> None:
    (proc,) = launch_ticketing(topics, **SNAPSHOTS)
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(http, proc.admin_url, "snap-corrupt", capacity=2)
        first = [await join(http, proc.url, "snap-corrupt") for _ in range(30)]
        # A snapshot of every event there is: the joins were decided in the API's own process
        # (ADR 0011), without command records, so the commands offset does not count them.
        partition, end = await room_partition_end(
            kafka_bootstrap, topics.room_events.name, topics.room_events.partitions
        )
        await eventually(
            lambda: any(
                e["partition"] == partition and e["events_offset"] >= end - 1  # the last commit marker
                for e in log_events(proc, "snapshot_written")
            ),
            timeout=30,
            what="a snapshot of all 30 joins",
        )
        proc.stop()

        # 1. a valid snapshot: recovery replays only what came after it
        proc = launch_ticketing.restart(proc)
        owned = log_events(proc, "partition_owned")[-1]
        found = log_events(proc, "snapshot_found")
        assert any(entry["snapshot"] is not None for entry in found[-3:])
        assert owned["events_replayed"] < 30, owned
        second = [await join(http, proc.url, "snap-corrupt") for _ in range(5)]
        await eventually(lambda: log_events(proc, "snapshot_written")[-1:] != [], timeout=30)
        proc.stop()

        # 2. every snapshot corrupted: recovery from the log, the same state
        assert await corrupt_every_snapshot(kafka_bootstrap, topics.snapshots.name, topics.snapshots.partitions) > 0
        proc = launch_ticketing.restart(proc)
        latest_found = log_events(proc, "snapshot_found")[-3:]
        assert all(entry["snapshot"] is None for entry in latest_found), latest_found
        assert any(entry["refused"] for entry in latest_found), latest_found
        assert any(entry["refused"] for entry in log_events(proc, "read_model_snapshot")[-3:])
        third = [await join(http, proc.url, "snap-corrupt") for _ in range(5)]
        tickets = [await settle(http, proc.url, t, t["ticket_token"]) for t in first + second + third]
        room = (await http.get(f"{proc.url}/v1/rooms/snap-corrupt")).json()

    assert [t["queue_no"] for t in tickets] == list(range(1, 41))
    assert [t["state"] for t in tickets] == ["admitted"] * 2 + ["waiting"] * 38
    assert [t["position"] for t in tickets[2:]] == list(range(38))
    assert (room["active"], room["waiting"], room["last_queue_no"]) == (2, 38, 40)
    acked = {t["ticket_id"] for t in tickets}
    check_log(await read_topic(kafka_bootstrap, topics.room_events.name), "snap-corrupt", acked, capacity=2)


async def test_an_archived_room_is_gone_from_the_api_and_stays_gone_after_a_restart_from_snapshots(
    topics: TopicRegistry, launch_ticketing: Any
) -> None:
    (proc,) = launch_ticketing(topics, **SNAPSHOTS)
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(http, proc.admin_url, "retired", capacity=1)
        await create_room(http, proc.admin_url, "kept", capacity=1)
        ticket = await join(http, proc.url, "retired")
        await join(http, proc.url, "kept")
        archive = f"{proc.admin_url}/v1/admin/rooms/retired/archive"
        busy = await http.post(archive, headers=admin_headers())
        assert busy.status_code == 409 and busy.json()["error"] == "room_not_empty"
        unauthorized = await http.post(archive)
        assert unauthorized.status_code == 401
        left = await http.delete(
            f"{proc.url}/v1/rooms/retired/tickets/{ticket['ticket_id']}", headers=bearer(ticket["ticket_token"])
        )
        assert left.status_code == 204

        async def archived() -> httpx.Response | None:
            answer = await http.post(archive, headers=admin_headers())
            return None if answer.status_code == 409 else answer  # the leave not folded yet

        done = await eventually(archived, timeout=15, what="the room archived once empty")
        assert done.status_code == 200 and done.json() == {"room_id": "retired", "state": "archived"}
        assert (await http.get(f"{proc.url}/v1/rooms/retired")).status_code == 404
        assert (
            await http.post(f"{proc.admin_url}/v1/admin/rooms/nowhere/archive", headers=admin_headers())
        ).status_code == 404
        archived_at = len(log_events(proc, "snapshot_written"))
        await eventually(lambda: len(log_events(proc, "snapshot_written")) > archived_at, timeout=30)
        proc.stop()
        proc = launch_ticketing.restart(proc)
        assert (await http.get(f"{proc.url}/v1/rooms/retired")).status_code == 404
        assert (await http.post(f"{proc.url}/v1/rooms/retired/tickets")).status_code == 404
        rooms = (await http.get(f"{proc.admin_url}/v1/admin/rooms", headers=admin_headers())).json()["rooms"]
        assert [room["room_id"] for room in rooms] == ["kept"]


async def test_a_sequencer_refuses_a_partition_whose_retained_log_no_snapshot_covers(
    topics: TopicRegistry, launch_ticketing: Any, kafka_bootstrap: str
) -> None:
    """room-events with a retention time that dropped the start of a room, and no snapshot: the
    process exits instead of building the room from what is left."""
    (proc,) = launch_ticketing(topics, WAITROOM_TICKETING_SNAPSHOT_EVERY_EVENTS="0")
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(http, proc.admin_url, "truncated", capacity=1)
        for _ in range(3):
            await join(http, proc.url, "truncated")
    proc.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        tps = [TopicPartition(topics.room_events.name, p) for p in range(topics.room_events.partitions)]
        ends = await asyncio.gather(*(admin_end(kafka_bootstrap, tp) for tp in tps))
        [events] = [tp for tp, end in zip(tps, ends, strict=True) if end > 0]
        await admin.delete_records({events: RecordsToDelete(before_offset=1)})  # the RoomConfigured
    finally:
        await admin.close()

    again = TicketingProcess(proc.name, proc.module, proc.env, proc.log_path, proc.ready_url, proc.args)
    launch_ticketing.started.append(again.start())
    await eventually(lambda: not again.alive(), timeout=60, what="the process to exit")
    assert again.returncode() not in (None, 0)
    [refused] = log_events(again, "room_events_truncated")
    assert refused["partition"] == events.partition


async def admin_end(bootstrap: str, tp: TopicPartition) -> int:
    reader = make_consumer(KafkaSettings(bootstrap_servers=bootstrap))
    await reader.start()
    try:
        return int((await reader.end_offsets([tp]))[tp])
    finally:
        await reader.stop()
