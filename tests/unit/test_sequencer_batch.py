"""The sequencer's batch handling (``_CommandLoop.process``) on hand-written fakes, no broker.

A fetched batch of one partition is decided in log order; its events carry the offset of the
command that caused them; poison and refused commands go to the dead-letter topic while the rest of
the batch is applied; the offset after the batch is committed (into the Kafka transaction when
there is one). Records the partition has applied already are skipped, a revoked partition's batch
is ignored, and a failing send rebuilds the partition from the log.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import InvalidSessionTimeoutError
from aiokafka.structs import ConsumerRecord

import waitroom_ticketing.sequencer
from waitroom_events.base import Message
from waitroom_events.codec import decode, encode, header
from waitroom_events.commands import AdmitRequested, JoinRequested, RoomConfigureRequested
from waitroom_events.events import RoomConfigured, TicketAdmitted, TicketIssued
from waitroom_events.topics import dlq_name, topic_registry
from waitroom_platform.kafka import HEADER_SOURCE_OFFSET
from waitroom_platform.runtime import Misconfigured
from waitroom_platform.settings import KafkaSettings
from waitroom_ticketing import sequencer as sequencer_module
from waitroom_ticketing.sequencer import OFFSETS_EVERY_S, OwnedPartition, Sequencer, SequencerOptions, _CommandLoop

TOPICS = topic_registry("unit", room_partitions=1)
COMMANDS = TopicPartition(TOPICS.commands.name, 0)
GROUP = "unit.sequencer"
NOW = 1_000.0

Record = ConsumerRecord[Any, Any]


def command_record(offset: int, value: bytes, headers: list[tuple[str, bytes]]) -> Record:
    return ConsumerRecord(COMMANDS.topic, 0, offset, 0, 0, b"r", value, None, 1, len(value), headers)


def commands(*messages: Message | bytes, first_offset: int = 0) -> list[Record]:
    """Command records from ``first_offset`` on; bytes are a poison value under a join's type."""
    join_type = encode(JoinRequested(room_id="r", ticket_id="x", requested_at=0.0)).headers
    records = []
    for offset, message in enumerate(messages, start=first_offset):
        if isinstance(message, bytes):
            records.append(command_record(offset, message, join_type))
        else:
            encoded = encode(message)
            records.append(command_record(offset, encoded.value, encoded.headers))
    return records


def configure(capacity: int = 2) -> RoomConfigureRequested:
    return RoomConfigureRequested(room_id="r", requested_at=NOW, capacity=capacity)


def join(ticket_id: str) -> JoinRequested:
    return JoinRequested(room_id="r", ticket_id=ticket_id, requested_at=NOW)


@dataclass
class Written:
    topic: str
    value: bytes
    headers: list[tuple[str, bytes]]

    def message(self) -> Message:
        return decode(self.value, self.headers)

    @property
    def source_offset(self) -> int | None:
        raw = header(self.headers, HEADER_SOURCE_OFFSET)
        return int(raw) if raw is not None else None


@dataclass
class FakeBatch:
    records: list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]] = field(default_factory=list)

    def append(self, *, key: bytes | None, value: bytes, timestamp: int | None, headers: Any) -> object:
        self.records.append((value, key, list(headers)))
        return object()


@dataclass
class FakeProducer:
    """Records what is sent; with transactions, only a committed transaction's records reach ``log``."""

    log: list[Written] = field(default_factory=list)
    offsets: list[tuple[dict[TopicPartition, int], str]] = field(default_factory=list)
    transactions: list[str] = field(default_factory=list)
    #: the send with this number (from 1) raises, as a broker that is gone
    fail_on_send: int | None = None
    sends: int = 0
    stopped: bool = False
    _pending: list[Written] | None = None

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, partition: int | None = None, **extra: Any
    ) -> asyncio.Future[Any]:
        self.sends += 1
        if self.sends == self.fail_on_send:
            raise ConnectionError("the broker went away")
        written = Written(topic, value, list(extra.get("headers") or ()))
        (self._pending if self._pending is not None else self.log).append(written)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        """A record batch: its records counted and kept one by one, like ``send``."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        for value, key, headers in batch.records:
            await self.send(topic, value, key=key, partition=partition, headers=headers)
        future.set_result(None)
        return future

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self._pending = []
        try:
            yield
        except BaseException:
            self.transactions.append("aborted")
            raise
        else:
            self.log.extend(self._pending)
            self.transactions.append("committed")
        finally:
            self._pending = None

    async def send_offsets_to_transaction(self, offsets: dict[TopicPartition, Any], group_id: str) -> None:
        self.offsets.append(({tp: meta.offset for tp, meta in offsets.items()}, group_id))

    async def stop(self) -> None:
        self.stopped = True

    def events(self) -> list[Written]:
        return [w for w in self.log if w.topic == TOPICS.room_events.name]

    def dead_letters(self) -> list[Written]:
        return [w for w in self.log if w.topic == dlq_name(TOPICS.commands.name)]


@dataclass
class FakeConsumer:
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    seeks: list[tuple[TopicPartition, int]] = field(default_factory=list)
    paused: set[TopicPartition] = field(default_factory=set)
    #: what ``getmany`` raises (an error the group coordinator hands to the user)
    fetch_error: Exception | None = None

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)

    async def getmany(self, *args: Any, **kwargs: Any) -> dict[TopicPartition, list[Record]]:
        if self.fetch_error is not None:
            raise self.fetch_error
        await asyncio.sleep(0.01)
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.commits[-1].get(tp) if self.commits else None


class LogReplayingSequencer(Sequencer):
    """Rebuilds from what the fake producer's log holds instead of reading room-events from Kafka."""

    def __init__(
        self, producer: FakeProducer, consumer: FakeConsumer, *, transactional: bool, snapshot_every_events: int = 0
    ) -> None:
        options = SequencerOptions(GROUP, transactional=transactional, snapshot_every_events=snapshot_every_events)
        super().__init__(KafkaSettings(), TOPICS, options, lambda: NOW)
        self.producer = producer
        self.consumer = consumer
        self._consumer = consumer  # type: ignore[assignment]
        if not transactional:
            self._plain_producer = producer  # type: ignore[assignment]
        self._owned[0] = OwnedPartition(partition=0, producers=[producer])  # type: ignore[arg-type]

    async def _rebuild(self, owned: OwnedPartition) -> None:
        for offset, written in enumerate(self.producer.events()):
            record = ConsumerRecord(
                TOPICS.room_events.name, 0, offset, 0, 0, b"r", written.value, None, 1, 1, written.headers
            )
            self._replay(owned, record)


def rig(*, transactional: bool, fail_on_send: int | None = None) -> tuple[LogReplayingSequencer, _CommandLoop]:
    producer = FakeProducer(fail_on_send=fail_on_send)
    consumer = FakeConsumer()
    sequencer = LogReplayingSequencer(producer, consumer, transactional=transactional)
    return sequencer, _CommandLoop(sequencer, consumer)  # type: ignore[arg-type]


def story(producer: FakeProducer) -> list[tuple[int | None, type[Message], str | None]]:
    return [(w.source_offset, type(w.message()), getattr(w.message(), "ticket_id", None)) for w in producer.events()]


async def test_a_batch_of_joins_is_decided_in_order_into_events_that_name_their_command_offset() -> None:
    sequencer, loop = rig(transactional=True)

    assert await loop.process(COMMANDS, commands(configure(capacity=2), join("a"), join("b"), join("c")))

    assert story(sequencer.producer) == [
        (0, RoomConfigured, None),
        (1, TicketIssued, "a"),
        (1, TicketAdmitted, "a"),
        (2, TicketIssued, "b"),
        (2, TicketAdmitted, "b"),
        (3, TicketIssued, "c"),  # the room is full: c waits
    ]
    issued = [e.message() for e in sequencer.producer.events()]
    assert [e.queue_no for e in issued if isinstance(e, TicketIssued)] == [1, 2, 3]
    assert sequencer._owned[0].next_offset == 4


async def test_poison_and_an_invalid_command_are_dead_lettered_while_the_rest_of_the_batch_is_applied() -> None:
    sequencer, loop = rig(transactional=True)
    batch = commands(
        configure(), b"{not json", join("a"), AdmitRequested(room_id="r", requested_at=NOW, count=0), join("b")
    )

    assert await loop.process(COMMANDS, batch)

    dead = sequencer.producer.dead_letters()
    assert [header(d.headers, "waitroom-source-offset") for d in dead] == [b"1", b"3"]
    assert [d.value for d in dead] == [batch[1].value, batch[3].value]
    assert all(header(d.headers, "waitroom-error") for d in dead)
    assert [(offset, kind) for offset, kind, _ in story(sequencer.producer)] == [
        (0, RoomConfigured),
        (2, TicketIssued),
        (2, TicketAdmitted),
        (4, TicketIssued),
        (4, TicketAdmitted),
    ]
    assert sequencer.producer.offsets == [({COMMANDS: 5}, GROUP)]


async def test_with_transactions_the_offsets_go_into_a_transaction_once_a_second_and_never_to_the_consumer() -> None:
    sequencer, loop = rig(transactional=True)

    await loop.process(COMMANDS, commands(configure(), join("a")))
    # Not in every transaction: the events name their commands' offsets, which is what recovery reads.
    assert sequencer.producer.transactions == ["committed"]
    assert sequencer.producer.offsets == []
    assert [offset for offset, _, _ in story(sequencer.producer)] == [0, 1, 1]

    sequencer._owned[0].offsets_sent_at -= OFFSETS_EVERY_S  # a second later
    await loop.process(COMMANDS, commands(join("b"), first_offset=2))
    assert sequencer.producer.offsets == [({COMMANDS: 3}, GROUP)]
    assert sequencer.producer.transactions == ["committed", "committed"]
    assert loop.consumer.commits == []


async def test_a_quiet_partitions_offset_is_sent_in_a_transaction_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequencer_module, "OFFSETS_EVERY_S", 0.05)
    sequencer, loop = rig(transactional=True)
    await loop.process(COMMANDS, commands(configure(), join("a")))
    assert sequencer.producer.offsets == []

    timer = asyncio.get_running_loop().create_task(sequencer._offsets_on_time())
    try:
        async with asyncio.timeout(5):
            while not sequencer.producer.offsets:
                await asyncio.sleep(0.01)
    finally:
        timer.cancel()
    assert sequencer.producer.offsets == [({COMMANDS: 2}, GROUP)]
    assert sequencer.producer.transactions == ["committed", "committed"]
    assert len(sequencer.producer.events()) == 3  # the offsets' transaction holds no event


async def test_a_partitions_transactions_alternate_between_its_transactional_ids() -> None:
    """ADR 0009: each transaction goes to the other id than the last, so it need not wait for the
    previous one's commit markers; the log (one partition, shared) holds every event in order."""
    sequencer, loop = rig(transactional=True)
    first = sequencer.producer
    second = FakeProducer(log=first.log)
    sequencer._owned[0].producers = [first, second]  # type: ignore[list-item]

    await loop.process(COMMANDS, commands(configure(), join("a")))
    await loop.process(COMMANDS, commands(join("b"), first_offset=2))
    await loop.process(COMMANDS, commands(join("c"), first_offset=3))

    assert first.transactions == ["committed", "committed"]
    assert second.transactions == ["committed"]
    assert [(offset, ticket) for offset, _, ticket in story(first)] == [
        (0, None),
        (1, "a"),
        (1, "a"),
        (2, "b"),
        (2, "b"),
        (3, "c"),
    ]


async def test_without_transactions_the_consumer_commits_the_offset_after_the_batch() -> None:
    sequencer, loop = rig(transactional=False)

    await loop.process(COMMANDS, commands(configure(), join("a")))

    assert sequencer.producer.transactions == []
    assert loop.consumer.commits == [{COMMANDS: 2}]
    assert len(sequencer.producer.events()) == 3


async def test_records_below_the_partitions_next_offset_are_skipped_so_nothing_is_applied_twice() -> None:
    sequencer, loop = rig(transactional=True)
    batch = commands(configure(), join("a"), join("b"))
    await loop.process(COMMANDS, batch)
    applied = len(sequencer.producer.events())

    assert await loop.process(COMMANDS, batch)  # the same batch again, as a re-fetch after a rebalance
    assert await loop.process(COMMANDS, [*batch[1:], *commands(join("c"), first_offset=3)])

    assert len(sequencer.producer.events()) == applied + 1  # only c's TicketIssued
    assert story(sequencer.producer)[-1] == (3, TicketIssued, "c")
    assert sequencer.producer.transactions == ["committed", "committed"]  # nothing at all for the old batch


async def test_the_batch_of_a_partition_revoked_while_it_was_in_flight_is_ignored() -> None:
    sequencer, loop = rig(transactional=True)
    await sequencer.revoke({COMMANDS})

    assert await loop.process(COMMANDS, commands(configure(), join("a")))

    assert sequencer.producer.log == []
    assert sequencer.producer.offsets == []
    assert sequencer.producer.stopped  # the revoked partition's own producer is closed


async def test_a_failing_send_rebuilds_the_partition_from_the_log_and_resumes_after_what_it_kept() -> None:
    sequencer, loop = rig(transactional=False, fail_on_send=2)  # the configure's event is sent, a's issue fails
    before = sequencer._owned[0]
    batch = commands(configure(), join("a"), join("b"))

    assert await loop.process(COMMANDS, batch)  # handled: the loop goes on

    after = sequencer._owned[0]
    assert after is not before
    assert after.rooms["r"].exists and after.rooms["r"].last_queue_no == 0  # what the log holds, not what was decided
    assert after.next_offset == 1
    assert loop.consumer.seeks[-1] == (COMMANDS, 1)
    assert loop.consumer.commits == []

    assert await loop.process(COMMANDS, batch[1:])  # re-fetched from the seek
    assert [(offset, kind) for offset, kind, _ in story(sequencer.producer)] == [
        (0, RoomConfigured),  # once
        (1, TicketIssued),
        (1, TicketAdmitted),
        (2, TicketIssued),
        (2, TicketAdmitted),
    ]
    assert loop.consumer.commits == [{COMMANDS: 3}]


async def test_a_takeover_that_fails_while_the_broker_is_down_is_retried_until_it_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sequencer, loop = rig(transactional=False, fail_on_send=2)
    real = sequencer._take_ownership
    attempts: list[int] = []

    async def broker_down_twice(tp: TopicPartition) -> OwnedPartition:
        attempts.append(tp.partition)
        if len(attempts) <= 2:
            raise ConnectionError("Unable to bootstrap")
        return await real(tp)

    monkeypatch.setattr(sequencer, "_take_ownership", broker_down_twice)
    monkeypatch.setattr("waitroom_ticketing.sequencer.asyncio.sleep", _no_sleep)

    assert await loop.process(COMMANDS, commands(configure(), join("a")))

    assert attempts == [0, 0, 0]
    assert 0 in sequencer._owned  # owned again once the broker answered


async def _no_sleep(_: float) -> None:
    return None


class SlowTakeover(LogReplayingSequencer):
    """A rebuild that waits for ``release``: a takeover as long as the test wants."""

    def __init__(self) -> None:
        super().__init__(FakeProducer(), FakeConsumer(), transactional=True)
        self._owned.clear()
        self.release = asyncio.Event()
        self.rebuilding = asyncio.Event()
        self.producers: list[FakeProducer] = []

    async def _take_ownership(self, tp: TopicPartition) -> OwnedPartition:
        producer = FakeProducer()
        self.producers.append(producer)
        owned = OwnedPartition(partition=tp.partition, producers=[producer])  # type: ignore[arg-type]
        try:
            self.rebuilding.set()
            await self.release.wait()
        except BaseException:
            await self._release(owned)
            raise
        owned.next_offset = 7
        return owned


async def test_an_assignment_returns_at_once_and_the_partition_stays_paused_until_its_takeover_owns_it() -> None:
    # aiokafka sends no heartbeats during the callback: a takeover inside it that outlasted the
    # session timeout got the member expelled and the takeover started over, for ever.
    sequencer = SlowTakeover()
    consumer = sequencer.consumer

    await asyncio.wait_for(sequencer.assign({COMMANDS}), timeout=1)
    await asyncio.wait_for(sequencer.rebuilding.wait(), timeout=1)

    assert consumer.paused == {COMMANDS}
    assert 0 not in sequencer._owned
    assert not sequencer.ready()

    sequencer.release.set()
    await asyncio.wait_for(sequencer.joined.wait(), timeout=1)
    assert 0 in sequencer._owned
    assert consumer.paused == set()
    assert consumer.seeks == [(COMMANDS, 7)]  # resumes after the last command applied


async def test_a_partition_revoked_during_its_takeover_is_never_owned_and_its_producer_is_stopped() -> None:
    sequencer = SlowTakeover()
    await sequencer.assign({COMMANDS})
    await asyncio.wait_for(sequencer.rebuilding.wait(), timeout=1)

    await asyncio.wait_for(sequencer.revoke({COMMANDS}), timeout=1)
    sequencer.release.set()
    await asyncio.sleep(0)

    assert 0 not in sequencer._owned
    assert [producer.stopped for producer in sequencer.producers] == [True]
    assert sequencer.consumer.seeks == []


async def test_a_session_timeout_the_cluster_refuses_ends_the_sequencer_naming_the_setting_to_change() -> None:
    sequencer, _ = rig(transactional=True)
    sequencer.consumer.fetch_error = InvalidSessionTimeoutError()

    with pytest.raises(Misconfigured) as refused:
        await asyncio.wait_for(sequencer.run(), timeout=5)

    message = str(refused.value)
    assert "WAITROOM_TICKETING_SESSION_TIMEOUT_MS" in message
    assert "group.min.session.timeout.ms" in message
    assert "3000 ms" in message  # the default it asked for


class RecordingSnapshots:
    """The snapshots topic, as a list of what was written."""

    def __init__(self) -> None:
        self.written: list[Any] = []

    async def write(self, framed: Any) -> None:
        self.written.append(framed)


async def test_no_command_is_decided_while_a_snapshot_encodes_the_rooms_in_its_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sequencer = LogReplayingSequencer(FakeProducer(), FakeConsumer(), transactional=True, snapshot_every_events=1)
    snapshots = RecordingSnapshots()
    sequencer._snapshots = snapshots  # type: ignore[assignment]
    loop = _CommandLoop(sequencer, sequencer.consumer)  # type: ignore[arg-type]
    encoding = threading.Event()
    go_on = threading.Event()
    seen: list[int] = []
    real_encode = waitroom_ticketing.sequencer.encode_rooms

    def slow_encode(rooms: Any, keep_ended_s: float | None) -> tuple[bytes, int]:
        encoding.set()
        go_on.wait(5)
        rooms = list(rooms)
        seen.append(rooms[0].last_queue_no)  # what the snapshot holds: the rooms as committed
        return real_encode(rooms, keep_ended_s)

    monkeypatch.setattr(waitroom_ticketing.sequencer, "encode_rooms", slow_encode)
    assert await loop.process(COMMANDS, commands(configure(capacity=0), join("a")))
    await asyncio.to_thread(encoding.wait, 5)  # the event loop is free meanwhile: this await returns

    second = asyncio.create_task(loop.process(COMMANDS, commands(join("b"), first_offset=2)))
    await asyncio.sleep(0.05)
    assert not second.done()  # waits for the encoding
    assert sequencer._owned[0].rooms["r"].last_queue_no == 1

    go_on.set()
    assert await asyncio.wait_for(second, timeout=5)
    # The first snapshot holds the rooms as committed before the second batch (a second snapshot,
    # of both batches, may already be under way once the first is written: every event is due here).
    assert seen[0] == 1
    assert sequencer._owned[0].rooms["r"].last_queue_no == 2
    await eventually_written(snapshots)


async def eventually_written(snapshots: RecordingSnapshots) -> None:
    for _ in range(1000):  # 10 s: compressing runs in a thread, which a loaded machine may hold up
        if snapshots.written:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no snapshot was written")


async def test_the_wait_for_the_previous_transactions_markers_is_short_after_a_small_batch_and_long_after_a_large(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aiokafka.producer.sender as sender

    monkeypatch.setattr(sender, "BACKOFF_OVERRIDE", sender.BACKOFF_OVERRIDE)  # restored after the test
    sequencer, loop = rig(transactional=True)
    many = [join(f"t{i}") for i in range(sequencer_module.SMALL_BATCH + 1)]
    await loop.process(COMMANDS, commands(configure(), *many))
    assert sender.BACKOFF_OVERRIDE == sequencer_module.CONCURRENT_RETRY_LARGE_MS / 1000  # let the next batch grow
    await loop.process(COMMANDS, commands(join("late"), first_offset=len(many) + 1))
    assert sender.BACKOFF_OVERRIDE == sequencer_module.CONCURRENT_RETRY_SMALL_MS / 1000  # the next join waits less
