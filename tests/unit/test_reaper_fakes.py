"""Hand-written fakes for the reaper's ports, a reaper assembled on them, and the fakes' own contract.

* :class:`FakeClock`: the time every part reads; tests move it.
* :class:`InMemoryLog`: the broker's partitions as lists of records. It is the recovery's
  ``LogReader``, what :class:`FakeFeedConsumer` fetches from, and where :class:`FakePublisher`
  appends what the reaper sends (with the timestamps it asked for), so a test reads the reaper's
  output as the next reaper would.
* :class:`ReaperRig`: the parts wired as ``waitroom_reaper.__main__`` wires them, plus the two
  loops that need a broker played by hand: the delay topic's consumer (due checks handed to the
  schedule, their offsets "committed") and, optionally, the sequencer applying expiry requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from waitroom_events.base import Message
from waitroom_events.codec import decode, encode
from waitroom_events.commands import ExpireRequested
from waitroom_events.events import RoomConfigured, TicketExpired, TicketIssued, TicketLeft
from waitroom_events.heartbeats import Heartbeat
from waitroom_events.reaper import ExpiryCheck
from waitroom_events.topics import TopicRegistry, topic_registry
from waitroom_platform.delayed import due_at
from waitroom_reaper.feed import HeartbeatFeed
from waitroom_reaper.looks import FinalApproach, Looks
from waitroom_reaper.options import Metrics, ReaperOptions
from waitroom_reaper.output import Output
from waitroom_reaper.recovery import LogReader, Recovery, SnapshotSource
from waitroom_reaper.schedule import Schedule
from waitroom_reaper.state import Owned, PartitionState

TOPICS = topic_registry("unit", room_partitions=1)
P = 0
START = 1_000.0
GRACE = ReaperOptions(group_id="g", heartbeat_group_id="h").heartbeat_grace_s
DELAY = 10.0

Record = ConsumerRecord[Any, Any]


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self._ms = round(now * 1000)

    @property
    def now(self) -> float:
        return self._ms / 1000

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self._ms += round(seconds * 1000)


def done(value: Any = None) -> asyncio.Future[Any]:
    """A delivery the broker has already acknowledged."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


def raw_record(topic: str, partition: int, offset: int, timestamp_ms: int, value: bytes | None, headers: Any) -> Record:
    return ConsumerRecord(
        topic, partition, offset, timestamp_ms, 0, b"k", value, None, 1, len(value or b""), list(headers)
    )


class InMemoryLog:
    """Partitions as lists, offsets from 0; a ``LogReader`` over them."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.partitions: dict[TopicPartition, list[Record]] = {}

    def records(self, topic: str, partition: int = P) -> list[Record]:
        return self.partitions.setdefault(TopicPartition(topic, partition), [])

    def append_raw(
        self, topic: str, value: bytes | None, headers: Any = (), *, partition: int = P, timestamp_ms: int | None = None
    ) -> Record:
        log = self.records(topic, partition)
        stamp = round(self.clock.now * 1000) if timestamp_ms is None else timestamp_ms
        record = raw_record(topic, partition, len(log), stamp, value, headers)
        log.append(record)
        return record

    def append(
        self, topic: str, message: Message, *, partition: int = P, timestamp_ms: int | None = None, headers: Any = ()
    ) -> Record:
        encoded = encode(message, headers)
        return self.append_raw(topic, encoded.value, encoded.headers, partition=partition, timestamp_ms=timestamp_ms)

    def messages(self, topic: str, partition: int = P) -> list[Message]:
        return [decode(r.value, r.headers) for r in self.records(topic, partition)]

    def end(self, tp: TopicPartition) -> int:
        return len(self.partitions.get(tp, []))

    # ---------------------------------------------------------------- LogReader

    async def read_to_end(self, tp: TopicPartition, fold: Callable[[Record], None], start: int | None) -> int:
        end = self.end(tp)
        if start is not None:
            for record in self.partitions.get(tp, [])[max(start, 0) : end]:
                fold(record)
        return end

    async def offset_for_time(self, tp: TopicPartition, timestamp_ms: int) -> int | None:
        return next((r.offset for r in self.partitions.get(tp, []) if r.timestamp >= timestamp_ms), None)

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[LogReader]:
        yield self


@dataclass(frozen=True)
class Sent:
    topic: str
    message: Message
    partition: int | None
    timestamp_ms: int | None


@dataclass
class FakePublisher:
    """The ``Sender`` and ``DeadLetters`` ports: records what was sent and appends it to the log."""

    log: InMemoryLog
    sent: list[Sent] = field(default_factory=list)
    dead_letters: list[tuple[Record, BaseException | str]] = field(default_factory=list)

    async def send(
        self,
        topic: str,
        message: Message,
        *,
        partition: int | None = None,
        headers: Any = (),
        timestamp_ms: int | None = None,
    ) -> asyncio.Future[Any]:
        self.sent.append(Sent(topic, message, partition, timestamp_ms))
        self.log.append(topic, message, partition=P if partition is None else partition, timestamp_ms=timestamp_ms)
        return done()

    async def dead_letter(self, record: Record, error: BaseException | str) -> asyncio.Future[Any]:
        self.dead_letters.append((record, error))
        return done()

    def checks(self) -> list[Sent]:
        return [s for s in self.sent if isinstance(s.message, ExpiryCheck)]

    def expiries(self, ticket_id: str | None = None) -> list[ExpireRequested]:
        return [
            s.message
            for s in self.sent
            if isinstance(s.message, ExpireRequested) and (ticket_id is None or s.message.ticket_id == ticket_id)
        ]


class FakeFeedConsumer:
    """What the heartbeat feed uses of an aiokafka consumer, fetching from the in-memory log.

    A fetch stamps ``last_poll_timestamp`` with the fake clock and learns each partition's high
    watermark, as a broker's fetch response does. ``lagging`` stops fetching (a slow consumer).
    """

    def __init__(self, log: InMemoryLog, committed: Mapping[TopicPartition, int] | None = None) -> None:
        self.log = log
        self.positions: dict[TopicPartition, int] = {}
        self.commits: dict[TopicPartition, int] = dict(committed or {})
        self.polled_ms: dict[TopicPartition, int] = {}
        self.highwaters: dict[TopicPartition, int] = {}
        self.lagging = False
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.positions = {tp: self.positions.get(tp, 0) for tp in partitions}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp)

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return self.polled_ms.get(tp)

    async def getmany(self, *, timeout_ms: int = 0, max_records: int = 500) -> dict[TopicPartition, list[Record]]:
        if self.lagging:
            return {}
        batches = {}
        for tp, position in self.positions.items():
            records = self.log.records(tp.topic, tp.partition)[position : position + max_records]
            self.polled_ms[tp] = round(self.log.clock.now * 1000)
            self.highwaters[tp] = self.log.end(tp)
            if records:
                batches[tp] = records
                self.positions[tp] = records[-1].offset + 1
        return batches

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits.update(offsets)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.commits.get(tp)


class ReaperRig:
    """A reaper of one partition on fakes, moved through time by the test."""

    def __init__(
        self,
        log: InMemoryLog | None = None,
        *,
        checks_committed: int = 0,
        heartbeats_bookmark: int | None = None,
        options: ReaperOptions | None = None,
        topics: TopicRegistry = TOPICS,
        bookmark_every_s: float = 1.0,
        snapshots: SnapshotSource | None = None,
    ) -> None:
        self.clock = log.clock if log is not None else FakeClock()
        self.log = log if log is not None else InMemoryLog(self.clock)
        self.topics = topics
        self.options = options or ReaperOptions(group_id="unit.reaper", heartbeat_group_id="unit.reaper.heartbeats")
        self.metrics = Metrics()
        self.owned: Owned = {}
        self.publisher = FakePublisher(self.log)
        beats_tp = TopicPartition(topics.heartbeats.name, P)
        bookmark = {beats_tp: heartbeats_bookmark} if heartbeats_bookmark is not None else {}
        self.consumer = FakeFeedConsumer(self.log, bookmark)
        self.output = Output(self.publisher, self.publisher.dead_letter, topics, self.metrics)
        self.looks = Looks(self.owned, self.options.heartbeat_grace_s)
        self.schedule = Schedule(
            self.owned, self.looks, self.output, self.metrics, self.options, topics.reaper_delay, self.clock
        )
        self.feed = HeartbeatFeed(
            self.consumer,  # type: ignore[arg-type]
            topics,
            self.owned,
            self.looks,
            self.schedule,
            self.output,
            self.metrics,
            bookmark_every_s=bookmark_every_s,
        )
        self.approach = FinalApproach(self.looks, self.output, self.metrics, self.options.heartbeat_grace_s, self.clock)
        self.recovery = Recovery(
            self.log.reader,
            topics,
            self.owned,
            self.feed,
            self.looks,
            self.schedule,
            self.output,
            self.metrics,
            self.options,
            self.clock,
            snapshots=snapshots,
        )
        #: the delay topic's consumer, played by hand: the next check record to hand over
        self.checks_position = checks_committed
        self.sequencer_applies = False
        self._applied = 0
        #: ticket_id -> (room_id, interval, next heartbeat at)
        self.beating: dict[str, tuple[str, float, float]] = {}

    # ---------------------------------------------------------------- what happens in the rooms

    def configure(self, room_id: str, timeout_s: float) -> None:
        self.log.append(
            self.topics.room_events.name,
            RoomConfigured(
                room_id=room_id,
                at=self.clock.now,
                capacity=10,
                heartbeat_timeout_s=timeout_s,
                heartbeat_interval_s=timeout_s / 3,
                target_url=None,
                paused=False,
            ),
        )

    def issue(self, room_id: str, ticket_id: str, queue_no: int = 1) -> None:
        self.log.append(
            self.topics.room_events.name,
            TicketIssued(room_id=room_id, ticket_id=ticket_id, queue_no=queue_no, at=self.clock.now),
        )

    def leave(self, room_id: str, ticket_id: str) -> None:
        self.log.append(
            self.topics.room_events.name,
            TicketLeft(room_id=room_id, ticket_id=ticket_id, queue_no=1, at=self.clock.now, was_admitted=True),
        )

    def heartbeat(self, room_id: str, ticket_id: str) -> None:
        self.log.append(self.topics.heartbeats.name, Heartbeat(room_id=room_id, ticket_id=ticket_id, at=self.clock.now))

    def keep_beating(self, room_id: str, ticket_id: str, interval_s: float) -> None:
        self.beating[ticket_id] = (room_id, interval_s, self.clock.now + interval_s)

    def stop_beating(self, ticket_id: str) -> None:
        del self.beating[ticket_id]

    # ---------------------------------------------------------------- the reaper's loops, one round each

    async def take_over(self) -> None:
        await self.recovery.take_over(P, checks_from=self.checks_position)

    async def fetch_feed(self) -> None:
        """One round of the feed's consumer loop (the skeleton's ``run`` body)."""
        await self.feed.before_fetch()
        batches = list((await self.feed.fetch()).items())
        for tp, records in batches:
            await self.feed.process(tp, records)
        await self.feed.after_fetch(batches)

    async def hand_over_due_checks(self) -> None:
        """What the delayed consumer does: the due head of the check partition goes to the schedule."""
        records = self.log.records(self.topics.reaper_delay.name)
        due = []
        while self.checks_position < len(records) and due_at(records[self.checks_position], DELAY) <= self.clock.now:
            due.append(records[self.checks_position])
            self.checks_position += 1
        if due:
            await self.schedule.on_due(P, due)

    def apply_expiries(self) -> None:
        """The sequencer: each ``ExpireRequested`` of a live ticket becomes a ``TicketExpired``."""
        requests = self.publisher.expiries()
        state = self.owned.get(P)
        for request in requests[self._applied :]:
            if state is not None and state.ticket(request.room_id, request.ticket_id)[1] is not None:
                self.log.append(
                    self.topics.room_events.name,
                    TicketExpired(
                        room_id=request.room_id,
                        ticket_id=request.ticket_id,
                        queue_no=1,
                        at=self.clock.now,
                        was_admitted=True,
                        last_heartbeat_at=request.last_heartbeat_at,
                    ),
                )
        self._applied = len(requests)

    async def tick(self) -> None:
        now = self.clock.now
        for ticket_id, (room_id, interval, at) in list(self.beating.items()):
            if at <= now:
                self.heartbeat(room_id, ticket_id)
                self.beating[ticket_id] = (room_id, interval, at + interval)
        await self.fetch_feed()
        await self.hand_over_due_checks()
        next_at = self.looks.next_at
        if next_at is not None and next_at <= now:
            await self.approach.look(now)
        if self.sequencer_applies:
            self.apply_expiries()

    async def run_for(self, seconds: float, step_s: float = 0.01) -> None:
        """Move the clock on in steps, running one round of every loop at each."""
        end = round((self.clock.now + seconds) * 1000)
        while round(self.clock.now * 1000) < end:
            self.clock.advance(step_s)
            await self.tick()

    async def run_until(self, condition: Callable[[], bool], limit_s: float, step_s: float = 0.01) -> float:
        """Run until ``condition()``; the fake time it became true (fails after ``limit_s``)."""
        end = self.clock.now + limit_s
        while not condition():
            assert self.clock.now < end, "the condition never held"
            self.clock.advance(step_s)
            await self.tick()
        return self.clock.now

    @property
    def state(self) -> PartitionState:
        return self.owned[P]


def expiry_times(rig: ReaperRig, ticket_id: str) -> list[float]:
    return [e.requested_at for e in rig.publisher.expiries(ticket_id)]


def check_dues(sent: Sequence[Sent]) -> list[float]:
    return [s.timestamp_ms / 1000 + DELAY for s in sent if s.timestamp_ms is not None]


# -------------------------------------------------------------------- the fakes' own contract


async def test_the_in_memory_log_finds_the_first_offset_at_or_after_a_time_like_offsets_for_times() -> None:
    log = InMemoryLog(FakeClock())
    tp = TopicPartition("t", P)
    for stamp in (1_000, 2_000, 3_000):
        log.append_raw("t", b"x", timestamp_ms=stamp)

    assert await log.offset_for_time(tp, 1_500) == 1
    assert await log.offset_for_time(tp, 2_000) == 1
    assert await log.offset_for_time(tp, 3_001) is None


async def test_the_in_memory_log_reads_from_a_start_to_its_end_and_from_none_reads_nothing() -> None:
    log = InMemoryLog(FakeClock())
    tp = TopicPartition("t", P)
    for _ in range(3):
        log.append_raw("t", b"x")
    seen: list[int] = []

    assert await log.read_to_end(tp, lambda r: seen.append(r.offset), 1) == 3
    assert await log.read_to_end(tp, lambda r: seen.append(r.offset), None) == 3
    assert seen == [1, 2]


async def test_the_fake_feed_consumer_fetches_from_its_positions_and_learns_the_end_and_the_poll_time() -> None:
    clock = FakeClock()
    log = InMemoryLog(clock)
    tp = TopicPartition("t", P)
    for _ in range(3):
        log.append_raw("t", b"x")
    consumer = FakeFeedConsumer(log)
    consumer.assign([tp])
    consumer.seek(tp, 1)
    clock.advance(1.5)

    batches = await consumer.getmany()

    assert [r.offset for r in batches[tp]] == [1, 2]
    assert await consumer.position(tp) == 3
    assert consumer.highwater(tp) == 3
    assert consumer.last_poll_timestamp(tp) == round(clock.now * 1000)
