"""The stats service as a process against a real broker: exact windows, restarts, alerts, estimated wait.

Room events are written straight onto ``room-events`` with the timestamps a scenario needs (the
sequencer's decisions, scripted), except in the estimated-wait test, where ticketing makes them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from e2e.conftest import Launcher, service_env
from support.http import admin_headers, bearer, create_room
from support.kafka_log import raw_records

from waitroom_core.windows import minute_start
from waitroom_devtools.procs import ServiceProcess
from waitroom_events.base import Message
from waitroom_events.codec import HEADER_TYPE, decode, encode
from waitroom_events.events import RoomConfigured, RoomEvent, TicketAdmitted, TicketExpired, TicketIssued, TicketLeft
from waitroom_events.stats import RoomStats, ThresholdBreached, ThresholdRecovered
from waitroom_events.topics import TopicRegistry
from waitroom_platform.kafka import HEADER_SOURCE_TOPIC, Publisher, partitions_of

pytestmark = pytest.mark.asyncio(loop_scope="session")


class StatsLauncher(Launcher):
    def __call__(self, topics: TopicRegistry, **extra: str) -> ServiceProcess:
        env = service_env(
            self._bootstrap,
            topics,
            WAITROOM_STATS_SNAPSHOT_INTERVAL_S="0.5",
            WAITROOM_STATS_DATA_DIR=str(self._log_dir / "stats-data"),
            **extra,
        )
        return self.start(ServiceProcess("stats", "waitroom_stats", env, self._log_dir / "stats.log"), 30)

    def restart(self, proc: ServiceProcess, ready_timeout: float = 30) -> ServiceProcess:
        return super().restart(proc, ready_timeout)


@pytest.fixture
def launch_stats(kafka_bootstrap: str, tmp_path: Path) -> Iterator[StatsLauncher]:
    launcher = StatsLauncher(kafka_bootstrap, tmp_path)
    yield launcher
    launcher.stop_all()


class Follower:
    """Every message of a topic from its beginning, collected as it arrives."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
        )
        self._topic = topic
        self.messages: list[Message] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        tps = [TopicPartition(self._topic, p) for p in await partitions_of(self._consumer, self._topic)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                self.messages.extend(decode(r.value, r.headers) for r in records)

    async def wait_for(self, predicate: Callable[[Message], bool], timeout: float, after: int = 0) -> Message:
        """The first message from index ``after`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages[after:]:
                if predicate(message):
                    return message
            await asyncio.sleep(0.05)
        raise AssertionError(f"no matching message on {self._topic} within {timeout} s")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._consumer.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def follow(kafka_bootstrap: str) -> AsyncIterator[Callable[[str], Any]]:
    followers: list[Follower] = []

    async def start(topic: str) -> Follower:
        follower = Follower(kafka_bootstrap, topic)
        await follower.start()
        followers.append(follower)
        return follower

    yield start
    for follower in followers:
        await follower.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def publisher(kafka_bootstrap: str) -> AsyncIterator[Publisher]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    yield Publisher(producer)
    await producer.stop()


async def read_raw(bootstrap: str, topic: str) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    return [(r.value, list(r.headers)) for r in await raw_records(bootstrap, topic)]


# --------------------------------------------------------------------------------------------
# the scripted scenario


def scripted(room: str, base: float) -> tuple[list[RoomEvent], list[RoomEvent]]:
    """Two minutes of a capacity-2 room from ``base`` (a minute boundary), in two parts."""

    issued_at: dict[int, float] = {}

    def issued(q: int, t: float) -> TicketIssued:
        issued_at[q] = base + t
        return TicketIssued(room_id=room, ticket_id=f"t{q}", queue_no=q, at=base + t)

    def admitted(q: int, t: float) -> TicketAdmitted:
        # as the sequencer writes it: the wait comes from the admission itself
        return TicketAdmitted(room_id=room, ticket_id=f"t{q}", queue_no=q, at=base + t, issued_at=issued_at[q])

    def left(q: int, t: float) -> TicketLeft:
        return TicketLeft(room_id=room, ticket_id=f"t{q}", queue_no=q, at=base + t, was_admitted=True)

    def expired(q: int, t: float, was_admitted: bool) -> TicketExpired:
        return TicketExpired(room_id=room, ticket_id=f"t{q}", queue_no=q, at=base + t, was_admitted=was_admitted)

    configured = RoomConfigured(
        room_id=room,
        at=base,
        capacity=2,
        heartbeat_timeout_s=20.0,
        heartbeat_interval_s=5.0,
        target_url=None,
        paused=False,
    )
    first_minute: list[RoomEvent] = [
        configured,
        issued(1, 1.5),
        admitted(1, 1.5),  # wait 0
        issued(2, 2.0),
        admitted(2, 2.0),  # wait 0
        issued(3, 5.0),
        issued(4, 10.0),
        left(1, 15.0),
        admitted(3, 15.0),  # wait 10
        issued(5, 20.0),
        expired(2, 30.0, was_admitted=True),
        admitted(4, 30.0),  # wait 20
    ]
    second_minute: list[RoomEvent] = [
        issued(6, 61.0),
        issued(7, 62.0),
        expired(7, 70.0, was_admitted=False),
        left(3, 75.0),
        admitted(5, 75.0),  # wait 55
        left(4, 90.0),
        admitted(6, 90.0),  # wait 29
        issued(8, 100.0),
    ]
    return first_minute, second_minute


# counts of (joins, admissions, leaves, expiries waiting, expiries admitted)
FIRST_MINUTE = (5, 4, 1, 0, 1)
SECOND_MINUTE = (3, 2, 2, 1, 0)
BOTH = (8, 6, 3, 1, 1)
# waits of the 6 admissions: 0, 0, 10, 20, 29, 55 -> nearest-rank p50 10, p90 55, p99 55, max 55
WAITS_5M = (10.0, 55.0, 55.0, 55.0)


def counts_1m(s: RoomStats) -> tuple[int, ...]:
    return (s.joins_1m, s.admissions_1m, s.leaves_1m, s.expiries_waiting_1m, s.expiries_admitted_1m)


def counts_5m(s: RoomStats) -> tuple[int, ...]:
    return (s.joins_5m, s.admissions_5m, s.leaves_5m, s.expiries_waiting_5m, s.expiries_admitted_5m)


def expected_1m(base: float, s: RoomStats) -> tuple[int, ...]:
    # The last closed minute depends on the wall clock at the snapshot; the scenario knows them all.
    return {base: FIRST_MINUTE, base + 60: SECOND_MINUTE}.get(s.window_start, (0, 0, 0, 0, 0))


def of_room(room: str, predicate: Callable[[RoomStats], bool] = lambda s: True) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, RoomStats) and m.room_id == room and predicate(m)


async def publish_all(publisher: Publisher, topic: str, events: list[RoomEvent]) -> None:
    for event in events:
        await publisher.publish(topic, event)


async def publish_aborted(bootstrap: str, topic: str, event: RoomEvent) -> None:
    """Write ``event`` in a transaction that is then aborted, as a sequencer that dies mid-batch would."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"ghost-{time.time_ns()}")
    await producer.start()
    try:
        await producer.begin_transaction()
        record = encode(event)
        await producer.send_and_wait(topic, record.value, key=record.key, headers=record.headers)
        await producer.abort_transaction()
    finally:
        await producer.stop()


async def test_a_scripted_scenario_gives_exact_window_counts_and_wait_percentiles(
    topics: TopicRegistry, launch_stats: StatsLauncher, publisher: Publisher, follow: Any, kafka_bootstrap: str
) -> None:
    base = minute_start(time.time()) - 120  # two closed minutes ago: every event is in the past
    first, second = scripted("scripted", base)
    await publish_all(publisher, topics.room_events.name, first)
    # Neither an aborted event nor a poison record counts; the poison one is parked on the DLQ.
    ghost = TicketIssued(room_id="scripted", ticket_id="ghost", queue_no=99, at=base + 3)
    await publish_aborted(kafka_bootstrap, topics.room_events.name, ghost)
    poison = [(HEADER_TYPE, TicketIssued.TYPE.encode())]
    await publisher.producer.send_and_wait(topics.room_events.name, b"{not json", key=b"scripted", headers=poison)
    await publish_all(publisher, topics.room_events.name, second)
    stats_topic = await follow(topics.room_stats.name)

    launch_stats(topics)
    snap = await stats_topic.wait_for(of_room("scripted", lambda s: s.joins_5m == 8), timeout=60)

    assert isinstance(snap, RoomStats)
    assert counts_5m(snap) == BOTH
    assert (snap.wait_p50_s, snap.wait_p90_s, snap.wait_p99_s, snap.wait_max_s) == WAITS_5M
    assert counts_1m(snap) == expected_1m(base, snap)
    assert (snap.capacity, snap.active, snap.waiting, snap.paused) == (2, 2, 1, False)
    assert snap.last_admission_at == base + 90
    dead = await read_raw(kafka_bootstrap, f"{topics.room_events.name}.dlq")
    assert [value for value, _ in dead] == [b"{not json"]
    assert (HEADER_SOURCE_TOPIC, topics.room_events.name.encode()) in dead[0][1]
    # Every snapshot of the room, before and after, is consistent with the log: none counts too much.
    await stats_topic.wait_for(of_room("scripted"), timeout=10, after=stats_topic.messages.index(snap) + 3)
    for s in stats_topic.messages:
        if isinstance(s, RoomStats) and s.joins_5m == 8:
            assert counts_5m(s) == BOTH and counts_1m(s) == expected_1m(base, s)


async def read_keys(bootstrap: str, topic: str) -> list[tuple[int, bytes]]:
    """(partition, key) of every record of ``topic``."""
    return [(r.partition, r.key) for r in await raw_records(bootstrap, topic)]


async def test_a_batch_of_many_rooms_folds_each_exactly_and_writes_its_tables_to_the_rooms_partition(
    topics: TopicRegistry, launch_stats: StatsLauncher, publisher: Publisher, follow: Any, kafka_bootstrap: str
) -> None:
    # Everything is in the log before the worker starts, so its first batches hold every room's
    # events interleaved. A table's changelog record must go to its room's partition (the partition
    # a worker owns the room by, and restores it from), whatever other room's event came last.
    base = minute_start(time.time()) - 120
    rooms = [f"multi-{i}" for i in range(8)]
    scripts = [scripted(room, base) for room in rooms]
    for part in (0, 1):
        for step in range(max(len(script[part]) for script in scripts)):
            for script in scripts:
                if step < len(script[part]):
                    await publisher.publish(topics.room_events.name, script[part][step])
    stats_topic = await follow(topics.room_stats.name)

    launch_stats(topics)
    for room in rooms:
        snap = await stats_topic.wait_for(of_room(room, lambda s: s.joins_5m == 8), timeout=60)
        assert isinstance(snap, RoomStats)
        assert counts_5m(snap) == BOTH
        assert (snap.wait_p50_s, snap.wait_p90_s, snap.wait_p99_s, snap.wait_max_s) == WAITS_5M
        assert counts_1m(snap) == expected_1m(base, snap)

    room_partition = {
        key.decode(): partition for partition, key in await read_keys(kafka_bootstrap, topics.room_events.name)
    }
    assert len(set(room_partition.values())) > 1, "the rooms should spread over several partitions"
    group = topics.commands.name.removesuffix(".commands") + ".stats"
    for table in ("gauges", "seconds"):
        written = await read_keys(kafka_bootstrap, f"{group}-{table}-changelog")
        assert written, f"nothing in the {table} changelog"
        for partition, key in written:
            room = json.loads(key) if table == "gauges" else json.loads(key)[0]
            assert partition == room_partition[room], f"{table} of {room} written to partition {partition}"


async def test_killing_the_stats_worker_mid_scenario_and_restarting_it_changes_no_count(
    topics: TopicRegistry, launch_stats: StatsLauncher, publisher: Publisher, follow: Any
) -> None:
    base = minute_start(time.time()) - 120
    first, second = scripted("crashy", base)
    stats_topic = await follow(topics.room_stats.name)
    # Offsets are committed rarely here, so the restarted worker replays everything it had applied.
    stats = launch_stats(topics, WAITROOM_STATS_COMMIT_INTERVAL_S="60")
    await publish_all(publisher, topics.room_events.name, first)
    await stats_topic.wait_for(of_room("crashy", lambda s: counts_5m(s) == FIRST_MINUTE), timeout=60)

    stats.kill()  # kill -9: nothing committed, nothing flushed beyond what was sent
    before_restart = len(stats_topic.messages)
    await publish_all(publisher, topics.room_events.name, second)
    launch_stats.restart(stats)
    snap = await stats_topic.wait_for(of_room("crashy", lambda s: s.joins_5m >= 8), timeout=60, after=before_restart)
    later = await stats_topic.wait_for(of_room("crashy"), timeout=10, after=stats_topic.messages.index(snap) + 4)

    for s in (snap, later):
        assert isinstance(s, RoomStats)
        assert counts_5m(s) == BOTH
        assert (s.wait_p50_s, s.wait_p90_s, s.wait_p99_s, s.wait_max_s) == WAITS_5M
        assert counts_1m(s) == expected_1m(base, s)
        assert (s.active, s.waiting) == (2, 1)
    after = [m for m in stats_topic.messages[before_restart:] if isinstance(m, RoomStats) and m.room_id == "crashy"]
    assert all(m.joins_5m <= 8 and m.admissions_5m <= 6 for m in after)


# --------------------------------------------------------------------------------------------
# alerts


async def test_a_breach_and_a_recovery_each_raise_one_alert_and_a_hovering_value_does_not_flap(
    topics: TopicRegistry, launch_stats: StatsLauncher, publisher: Publisher, follow: Any
) -> None:
    room = "hover"
    rules = {
        "waiting_above": 5,
        "hysteresis": 0.4,  # a breach recovers below 3 waiting
        "estimated_wait_above_s": None,
        "active_fraction_at_or_above": None,
        "stalled_after_s": None,
        "expiry_ratio_above": None,
    }
    stats_topic = await follow(topics.room_stats.name)
    alerts_topic = await follow(topics.alerts.name)
    launch_stats(topics, WAITROOM_STATS_ROOM_RULES=json.dumps({room: rules}))
    now = time.time()
    await publisher.publish(
        topics.room_events.name,
        RoomConfigured(
            room_id=room,
            at=now,
            capacity=0,  # nobody is admitted: the waiting count is the scenario's to set
            heartbeat_timeout_s=20.0,
            heartbeat_interval_s=5.0,
            target_url=None,
            paused=False,
        ),
    )
    next_no = 1
    waiting: list[int] = []

    async def set_waiting(n: int) -> None:
        nonlocal next_no
        while len(waiting) < n:
            await publisher.publish(
                topics.room_events.name,
                TicketIssued(room_id=room, ticket_id=f"t{next_no}", queue_no=next_no, at=time.time()),
            )
            waiting.append(next_no)
            next_no += 1
        while len(waiting) > n:
            q = waiting.pop()
            await publisher.publish(
                topics.room_events.name,
                TicketExpired(room_id=room, ticket_id=f"t{q}", queue_no=q, at=time.time(), was_admitted=False),
            )
        # The next step only once a snapshot shows this one (so every value is evaluated).
        mark = len(stats_topic.messages)
        await stats_topic.wait_for(of_room(room, lambda s: s.waiting == n), timeout=30, after=mark)

    for n in (4, 6, 5, 6, 5, 4, 6, 3, 5, 6, 5):  # breach at the first 6, then hover in the band
        await set_waiting(n)
    hovering = [m for m in alerts_topic.messages if getattr(m, "room_id", None) == room]
    await set_waiting(2)  # below the band: recovery
    recovered = await alerts_topic.wait_for(lambda m: isinstance(m, ThresholdRecovered), timeout=30)
    await set_waiting(2)  # one more snapshot after the recovery: nothing more
    await stats_topic.wait_for(of_room(room), timeout=10, after=len(stats_topic.messages))

    alerts = [m for m in alerts_topic.messages if getattr(m, "room_id", None) == room]
    assert [type(m) for m in hovering] == [ThresholdBreached]
    assert [type(m) for m in alerts] == [ThresholdBreached, ThresholdRecovered]
    breach = alerts[0]
    assert isinstance(breach, ThresholdBreached) and isinstance(recovered, ThresholdRecovered)
    assert (breach.rule, breach.value, breach.threshold) == ("waiting_high", 6.0, 5.0)
    assert recovered.alert_id == breach.alert_id and recovered.breached_at == breach.at
    assert recovered.value == 2.0


# --------------------------------------------------------------------------------------------
# estimated wait, through the ticketing API


async def test_a_waiting_ticket_in_a_steadily_admitting_room_waits_within_20_percent_of_its_estimate(
    topics: TopicRegistry, launch_stats: StatsLauncher, launch_ticketing: Any
) -> None:
    [api] = launch_ticketing(topics)
    launch_stats(topics)
    pace_s = 0.5  # the admitted visitor leaves (and the next is admitted) every half second
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(http, api.admin_url, "steady", capacity=1)
        responses = await asyncio.gather(*(http.post(f"{api.url}/v1/rooms/steady/tickets") for _ in range(70)))
        assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
        tickets = sorted((r.json() for r in responses), key=lambda t: t["queue_no"])

        async def status(ticket: dict[str, Any]) -> dict[str, Any]:
            url = f"{api.url}/v1/rooms/steady/tickets/{ticket['ticket_id']}"
            response = await http.get(url, headers=bearer(ticket["ticket_token"]))
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        async def leave_one_by_one() -> None:
            for ticket in tickets:
                await asyncio.sleep(pace_s)
                await http.delete(
                    f"{api.url}/v1/rooms/steady/tickets/{ticket['ticket_id']}", headers=bearer(ticket["ticket_token"])
                )

        leaving = asyncio.create_task(leave_one_by_one())
        await asyncio.sleep(20)  # the scenario: 20 s of steady admissions before we measure
        probe = tickets[59]
        view = await status(probe)
        estimated_at = time.monotonic()
        assert view["state"] == "waiting" and view["estimated_wait_s"] is not None, view
        while (await status(probe))["state"] != "admitted":
            assert time.monotonic() - estimated_at < 120
            await asyncio.sleep(0.05)
        actual = time.monotonic() - estimated_at
        leaving.cancel()
        room = (await http.get(f"{api.url}/v1/rooms/steady")).json()
        admin_stats = await http.get(f"{api.admin_url}/v1/admin/rooms/steady/stats", headers=admin_headers())
        unknown = await http.get(f"{api.admin_url}/v1/admin/rooms/nowhere/stats", headers=admin_headers())

    assert abs(view["estimated_wait_s"] - actual) <= 0.2 * actual, (view, actual)
    assert room["estimated_wait_s"] is not None
    assert admin_stats.status_code == 200
    body = admin_stats.json()
    assert body["snapshot"]["room_id"] == "steady" and body["snapshot"]["admissions_5m"] > 30
    assert isinstance(body["windows_1m"], list)
    assert unknown.status_code == 404 and unknown.json()["error"] == "room_not_found"
