"""The reaper with ticketing, both as processes, against a real broker: expiry of silent tickets.

Rooms here use a short heartbeat timeout (3-6 s) so the tests run in seconds; the default stays 20 s.
The lateness bound is measured from the client's side: from the moment the last successful
heartbeat was sent to the ``TicketExpired`` the sequencer wrote.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from e2e.conftest import Launcher, service_env
from support.http import bearer, create_room, settle, ticket_status
from support.kafka_log import raw_records, read_topic
from support.waiting import eventually

from waitroom_devtools.procs import ServiceProcess, free_port
from waitroom_events.codec import encode
from waitroom_events.events import TicketAdmitted, TicketExpired
from waitroom_events.heartbeats import Heartbeat, HeartbeatBatch
from waitroom_events.topics import TopicRegistry, dlq_name

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: the issue's bound: a silent ticket is expired within timeout + 1 s of its last heartbeat
PRECISION_S = 1.0


class ReaperLauncher(Launcher):
    def __call__(self, topics: TopicRegistry) -> ServiceProcess:
        port = free_port()
        env = service_env(self._bootstrap, topics, WAITROOM_REAPER_HEALTH_PORT=str(port))
        proc = ServiceProcess(
            "reaper", "waitroom_reaper", env, self._log_dir / "reaper.log", f"http://127.0.0.1:{port}/readyz"
        )
        return self.start(proc)


@pytest.fixture
def launch_reaper(kafka_bootstrap: str, tmp_path: Path) -> Iterator[ReaperLauncher]:
    launcher = ReaperLauncher(kafka_bootstrap, tmp_path)
    yield launcher
    launcher.stop_all()


class Visitors:
    """Tickets that heartbeat on their own until told to stop; notes each one's last good heartbeat."""

    def __init__(self, http: httpx.AsyncClient, base: str, interval_s: float) -> None:
        self.http = http
        self.base = base
        self.interval_s = interval_s
        self.last_sent: dict[str, float] = {}
        self.refused: dict[str, int] = {}
        self.accepted: dict[str, int] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, ticket: dict[str, Any]) -> None:
        self._tasks[ticket["ticket_id"]] = asyncio.create_task(self._beat(ticket))

    def stop(self, ticket: dict[str, Any]) -> None:
        self._tasks.pop(ticket["ticket_id"]).cancel()

    async def stop_all(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _beat(self, ticket: dict[str, Any]) -> None:
        url = f"{self.base}/v1/rooms/{ticket['room_id']}/tickets/{ticket['ticket_id']}/heartbeat"
        while True:
            sent = time.time()
            response = await self.http.post(url, headers=bearer(ticket["ticket_token"]))
            if response.status_code == 200:
                self.last_sent[ticket["ticket_id"]] = sent
                self.accepted[ticket["ticket_id"]] = self.accepted.get(ticket["ticket_id"], 0) + 1
            else:
                self.refused[ticket["ticket_id"]] = response.status_code
            await asyncio.sleep(self.interval_s)


async def join(
    http: httpx.AsyncClient, base: str, room_id: str, on_joined: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Join and wait for the queue number; ``on_joined(ticket_id)`` runs as soon as the API answers."""
    response = await http.post(f"{base}/v1/rooms/{room_id}/tickets")
    assert response.status_code in (201, 202), response.text
    body: dict[str, Any] = response.json()
    if on_joined is not None:
        on_joined(body["ticket_id"])
    token = body["ticket_token"]  # returned once, at join
    return {**await settle(http, base, body, token), "ticket_token": token}


async def wait_for_state(
    http: httpx.AsyncClient, base: str, ticket: dict[str, Any], wanted: str, timeout: float
) -> float:
    """Poll until the ticket's state is ``wanted`` (410 counts as expired); return when it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await ticket_status(http, base, ticket, ticket["ticket_token"])
        state = "expired" if response.status_code == 410 else response.json().get("state")
        if state == wanted:
            return time.time()
        await asyncio.sleep(0.05)
    raise AssertionError(f"ticket {ticket['queue_no']} not {wanted} within {timeout} s")


async def expired_events(bootstrap: str, topics: TopicRegistry, room_id: str) -> dict[str, TicketExpired]:
    events = await read_topic(bootstrap, topics.room_events.name)
    return {e.ticket_id: e for e in events if isinstance(e, TicketExpired) and e.room_id == room_id}


async def test_two_of_three_tickets_stop_heartbeating_and_are_expired_within_the_timeout_plus_a_second(
    topics: TopicRegistry, launch_ticketing: Any, launch_reaper: ReaperLauncher, kafka_bootstrap: str
) -> None:
    timeout_s = 3.0
    launch_reaper(topics)
    (svc,) = launch_ticketing(topics)
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(
            http, svc.admin_url, "gig", capacity=3, heartbeat_timeout_s=timeout_s, heartbeat_interval_s=1.0
        )
        tickets = [await join(http, svc.url, "gig") for _ in range(5)]
        assert [t["state"] for t in tickets] == ["admitted"] * 3 + ["waiting"] * 2
        visitors = Visitors(http, svc.url, interval_s=0.5)
        for ticket in tickets:
            visitors.start(ticket)
        await eventually(
            lambda: all(visitors.accepted.get(t["ticket_id"], 0) >= 3 for t in tickets), 10, "a few heartbeats each"
        )
        silent, staying, next_in_line = tickets[:2], tickets[2], tickets[3:]
        for ticket in silent:
            visitors.stop(ticket)

        for ticket in silent:
            await wait_for_state(http, svc.url, ticket, "expired", timeout=timeout_s + 5)
        for ticket in next_in_line:
            await wait_for_state(http, svc.url, ticket, "admitted", timeout=5)
        await asyncio.sleep(timeout_s + PRECISION_S)  # long enough for a wrong expiry of the others to show
        await visitors.stop_all()
        assert (await ticket_status(http, svc.url, staying, staying["ticket_token"])).json()["state"] == "admitted"

    expired = await expired_events(kafka_bootstrap, topics, "gig")
    assert set(expired) == {t["ticket_id"] for t in silent}
    for ticket in silent:
        event = expired[ticket["ticket_id"]]
        lateness = event.at - visitors.last_sent[ticket["ticket_id"]] - timeout_s
        assert event.last_heartbeat_at is not None
        assert event.at - event.last_heartbeat_at >= timeout_s, "expired before its timeout"
        assert lateness <= PRECISION_S, f"expired {lateness:.3f} s after its timeout"
        assert event.was_admitted
    assert visitors.refused == {}, "a heartbeating ticket was refused"
    admitted = [e for e in await read_topic(kafka_bootstrap, topics.room_events.name) if isinstance(e, TicketAdmitted)]
    assert {e.queue_no for e in admitted if e.room_id == "gig"} == {1, 2, 3, 4, 5}


async def test_a_silent_waiting_ticket_is_expired_and_the_positions_behind_it_drop(
    topics: TopicRegistry, launch_ticketing: Any, launch_reaper: ReaperLauncher, kafka_bootstrap: str
) -> None:
    timeout_s = 3.0
    launch_reaper(topics)
    (svc,) = launch_ticketing(topics)
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(
            http, svc.admin_url, "line", capacity=1, heartbeat_timeout_s=timeout_s, heartbeat_interval_s=1.0
        )
        first, quiet, *behind = [await join(http, svc.url, "line") for _ in range(4)]
        assert [t["position"] for t in behind] == [1, 2]
        visitors = Visitors(http, svc.url, interval_s=0.5)
        for ticket in (first, *behind):
            visitors.start(ticket)

        await wait_for_state(http, svc.url, quiet, "expired", timeout=timeout_s + 5)
        positions = [(await ticket_status(http, svc.url, t, t["ticket_token"])).json()["position"] for t in behind]
        await visitors.stop_all()

    assert positions == [0, 1]
    expired = await expired_events(kafka_bootstrap, topics, "line")
    assert set(expired) == {quiet["ticket_id"]}
    event = expired[quiet["ticket_id"]]
    assert not event.was_admitted
    assert event.last_heartbeat_at is None  # never heartbeated: silent since it was issued
    assert visitors.refused == {}


class HeartbeatPump:
    """Heartbeats straight onto the heartbeats topic, as the API writes them, for many tickets at once.

    Two hundred visitors heartbeating over HTTP would measure this machine's HTTP stack (two cores
    shared with the services); the reaper only ever sees the topic.
    """

    def __init__(self, bootstrap: str, topic: str, interval_s: float) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self._topic = topic
        self._interval_s = interval_s
        self.beating: dict[str, str] = {}  # ticket_id -> room_id
        self.last_sent: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> HeartbeatPump:
        await self._producer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._producer.stop()

    async def _run(self) -> None:
        while True:
            sends = []
            for ticket_id, room_id in list(self.beating.items()):
                at = time.time()
                record = encode(Heartbeat(room_id=room_id, ticket_id=ticket_id, at=at))
                sends.append(
                    await self._producer.send(self._topic, record.value, key=record.key, headers=record.headers)
                )
                self.last_sent[ticket_id] = at
            await asyncio.gather(*sends)
            await asyncio.sleep(self._interval_s)


async def test_a_reaper_killed_with_200_live_tickets_expires_none_that_kept_heartbeating_and_every_silent_one(
    topics: TopicRegistry, launch_ticketing: Any, launch_reaper: ReaperLauncher, kafka_bootstrap: str
) -> None:
    timeout_s = 4.0
    reaper = launch_reaper(topics)
    (svc,) = launch_ticketing(topics)
    limits = httpx.Limits(max_connections=50)
    async with (
        httpx.AsyncClient(timeout=60, limits=limits) as http,
        HeartbeatPump(kafka_bootstrap, topics.heartbeats.name, interval_s=1.0) as pump,
    ):
        await create_room(
            http, svc.admin_url, "crowd", capacity=50, heartbeat_timeout_s=timeout_s, heartbeat_interval_s=1.0
        )
        tickets = []

        def beat(ticket_id: str) -> None:
            pump.beating[ticket_id] = "crowd"

        for _ in range(4):
            tickets.extend(await asyncio.gather(*(join(http, svc.url, "crowd", beat) for _ in range(50))))
        silent, live = tickets[:20], tickets[20:]
        await asyncio.sleep(2.0)
        assert await expired_events(kafka_bootstrap, topics, "crowd") == {}, "expired while heartbeating"

        reaper.kill()  # kill -9
        for ticket in silent:
            del pump.beating[ticket["ticket_id"]]
        await asyncio.sleep(2.0)
        await asyncio.to_thread(launch_reaper.restart, reaper)  # waiting for it must not stall the heartbeats

        deadline = time.monotonic() + 60
        while len(await expired_events(kafka_bootstrap, topics, "crowd")) < len(silent):
            assert time.monotonic() < deadline, "not every silent ticket was expired after the restart"
            await asyncio.sleep(0.5)
        await asyncio.sleep(2 * timeout_s)  # the live ones keep heartbeating: none of them may go
        statuses = await asyncio.gather(*(ticket_status(http, svc.url, t, t["ticket_token"]) for t in live))

    expired = await expired_events(kafka_bootstrap, topics, "crowd")
    assert set(expired) == {t["ticket_id"] for t in silent}
    assert [r.status_code for r in statuses] == [200] * len(live)


async def test_malformed_records_on_the_delay_and_heartbeat_topics_are_dead_lettered_and_the_reaper_keeps_working(
    topics: TopicRegistry, launch_ticketing: Any, launch_reaper: ReaperLauncher, kafka_bootstrap: str
) -> None:
    timeout_s = 3.0
    reaper = launch_reaper(topics)
    (svc,) = launch_ticketing(topics)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        due_now = int((time.time() - 11) * 1000)  # stamped 11 s ago: due at once on a 10 s delay topic
        for partition in range(topics.reaper_delay.partitions):
            await producer.send_and_wait(
                topics.reaper_delay.name,
                b"{not json",
                key=b"x",
                partition=partition,
                timestamp_ms=due_now,
                headers=[("waitroom-type", b"waitroom.reaper.expiry-check.v1")],
            )
            await producer.send_and_wait(
                topics.heartbeats.name,
                b'{"room_id": "x", "ticket_id": 7, "at": "noon"}',
                key=b"x",
                partition=partition,
                headers=[("waitroom-type", Heartbeat.TYPE.encode())],
            )
    finally:
        await producer.stop()

    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(
            http, svc.admin_url, "after", capacity=1, heartbeat_timeout_s=timeout_s, heartbeat_interval_s=1.0
        )
        ticket = await join(http, svc.url, "after")
        await wait_for_state(http, svc.url, ticket, "expired", timeout=timeout_s + 5)

    partitions = topics.reaper_delay.partitions
    delay_dlq = await eventually(
        lambda: _at_least(raw_records(kafka_bootstrap, dlq_name(topics.reaper_delay.name)), partitions),
        15,
        "a dead letter per partition of the delay topic",
    )
    beats_dlq = await eventually(
        lambda: _at_least(raw_records(kafka_bootstrap, dlq_name(topics.heartbeats.name)), partitions),
        15,
        "a dead letter per partition of the heartbeats",
    )
    assert sorted(r.value for r in delay_dlq) == [b"{not json"] * partitions
    assert len(beats_dlq) == partitions
    assert all(dict(r.headers).get("waitroom-error") for r in delay_dlq + beats_dlq)
    assert reaper.alive()


async def _at_least(records: Any, count: int) -> Any:
    """The records once there are ``count`` of them, else None (for ``eventually``)."""
    found = await records
    return found if len(found) >= count else None


async def test_with_the_heartbeat_window_at_its_maximum_no_visitor_heartbeating_every_interval_is_expired(
    topics: TopicRegistry, launch_ticketing: Any, launch_reaper: ReaperLauncher, kafka_bootstrap: str
) -> None:
    """80 visitors heartbeat over HTTP every interval through a 100 ms coalescing window (batches,
    answers before the acknowledgement where the rule allows it) for 3x the timeout: none is expired,
    and the 8 who stop are, on time."""
    timeout_s, interval_s = 6.0, 0.5
    launch_reaper(topics)
    (svc,) = launch_ticketing(
        topics, WAITROOM_TICKETING_HEARTBEAT_WINDOW_MS="100", WAITROOM_TICKETING_PUBLISH_TIMEOUT_S="0.5"
    )
    limits = httpx.Limits(max_connections=60)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        # Joining 80 at once on two cores takes longer than the short timeout: the room gets it
        # once everyone heartbeats (the reaper re-arms its looks for a shorter timeout).
        await create_room(
            http, svc.admin_url, "batch", capacity=50, heartbeat_timeout_s=60, heartbeat_interval_s=interval_s
        )
        tickets = list(await asyncio.gather(*(join(http, svc.url, "batch") for _ in range(80))))
        visitors = Visitors(http, svc.url, interval_s=interval_s)
        for ticket in tickets:
            visitors.start(ticket)
        await eventually(
            lambda: all(visitors.accepted.get(t["ticket_id"], 0) >= 2 for t in tickets),
            60,
            "two heartbeats each",
            seen=lambda: (sorted(visitors.accepted.values())[:5], visitors.refused),
        )
        await create_room(http, svc.admin_url, "batch", heartbeat_timeout_s=timeout_s)
        await asyncio.sleep(timeout_s)  # heartbeats under the short timeout, before any visitor stops
        silent = tickets[:8]
        for ticket in silent:
            visitors.stop(ticket)
        stopped_at = time.time()
        await asyncio.sleep(3 * timeout_s)  # the live ones keep heartbeating; a wrong expiry would show
        await visitors.stop_all()

    expired = await expired_events(kafka_bootstrap, topics, "batch")
    # The safety property itself: a heartbeat answered 200 keeps its ticket for the timeout.
    for ticket_id, event in expired.items():
        assert event.at - visitors.last_sent[ticket_id] >= timeout_s - 0.05, "an answered heartbeat was lost"
    records = [m for m in await read_topic(kafka_bootstrap, topics.heartbeats.name) if m.room_id == "batch"]
    wrong = set(expired) - {t["ticket_id"] for t in silent}
    stamps = {
        ticket_id: sorted(
            m.at
            for m in records
            if (isinstance(m, Heartbeat) and m.ticket_id == ticket_id)
            or (isinstance(m, HeartbeatBatch) and ticket_id in m.ticket_ids)
        )
        for ticket_id in wrong
    }
    assert not wrong, "visitors heartbeating every interval were expired: " + "; ".join(
        f"expired at {expired[t].at:.2f}, last heard {expired[t].last_heartbeat_at}, logged beats {stamps[t][-6:]}"
        for t in list(wrong)[:3]
    )
    assert set(expired) == {t["ticket_id"] for t in silent}
    for ticket in silent:
        event = expired[ticket["ticket_id"]]
        # lateness from the last heartbeat the log holds (stamped when its batch was written: on a
        # loaded machine that can be a while after the client sent it, which delays, never hastens)
        assert event.last_heartbeat_at is not None
        assert event.at - event.last_heartbeat_at - timeout_s <= PRECISION_S
        assert event.at >= stopped_at
    assert visitors.refused == {}, "a heartbeat was refused"
    batches = [m for m in records if isinstance(m, HeartbeatBatch)]
    assert batches, "no heartbeat was coalesced"
    beats = sum(len(b.ticket_ids) for b in batches) + sum(isinstance(m, Heartbeat) for m in records)
    assert len(records) < beats / 5, f"{len(records)} records for {beats} heartbeats: not coalesced"
