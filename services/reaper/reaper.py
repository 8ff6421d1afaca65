"""The reaper: expires tickets that stopped heartbeating, through the delay topic.

Per partition ``p`` it owns (a consumer group over the delay topic), the reaper follows partition
``p`` of room-events and heartbeats, which hold the same rooms (co-partitioned topics):

* every issued ticket gets a durable **check** on the delay topic; a due check looks at each of
  its tickets and drops it (ended), expires it (silent) or writes its next check;
* when a ticket's deadline comes before its next check, an in-memory **look** is armed at the
  deadline, so expiry lands within the grace period, not within the delay
  (docs/adr/0003-reaper-precision.md);
* an expiry is an ``ExpireRequested`` command: the sequencer, the room's only writer, emits
  ``TicketExpired`` and admits the next ticket in the same step.

On assignment of a partition its state is rebuilt from the log before any check is handled: the
room-events from the start, heartbeats from ``now - max(timeout) - margin`` and the pending checks
(from the group's committed offset), so a crash loses no check and expires nobody who heartbeated.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from waitroom_core.expiry import (
    check_timestamp,
    decide_check,
    decide_look,
    first_look,
    heartbeat_replay_start,
    is_superseded,
)
from waitroom_events.base import Message
from waitroom_events.codec import DecodeError, decode, encode
from waitroom_events.commands import ExpireRequested
from waitroom_events.events import RoomConfigured, TicketExpired, TicketIssued, TicketLeft
from waitroom_events.heartbeats import Heartbeat
from waitroom_events.reaper import ExpiryCheck
from waitroom_events.topics import TopicRegistry
from waitroom_platform.delayed import DelayedConsumer, Record, due_at
from waitroom_platform.kafka import (
    extract_context,
    make_consumer,
    make_producer,
    outgoing_headers,
    produce_span,
    send_to_dead_letter,
)
from waitroom_platform.runtime import Component
from waitroom_platform.settings import KafkaSettings
from waitroom_reaper.state import PartitionState, RoomEntry, TicketEntry

log = structlog.get_logger()
tracer = trace.get_tracer("waitroom.reaper")

ROOM_EVENT_TYPES = (RoomConfigured, TicketIssued, TicketLeft, TicketExpired)
#: a look that found the heartbeats not read up to the deadline yet tries again this much later
LOOK_RETRY_S = 0.02
#: the broker answers a fetch a little before the consumer sees it: what it said is this old
FETCH_SLACK_S = 0.02
HEARTBEAT_COMMIT_EVERY_S = 1.0


@dataclass(frozen=True)
class ReaperOptions:
    group_id: str
    heartbeat_group_id: str
    heartbeat_grace_s: float = 0.1
    check_tick_s: float = 1.0
    resend_expire_after_s: float = 10.0
    recovery_margin_s: float = 30.0
    session_timeout_ms: int = 6_000


@dataclass
class Metrics:
    heartbeats: int = 0
    room_events: int = 0
    check_records_handled: int = 0
    ticket_checks: int = 0
    check_records_written: int = 0
    looks: int = 0
    expiries_requested: int = 0
    dead_lettered: int = 0
    recoveries: int = 0
    last_recovery_s: float = 0.0


class Reaper(Component):
    name = "reaper"

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: TopicRegistry,
        options: ReaperOptions,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kafka = kafka
        self._topics = topics
        self._options = options
        self._clock = clock
        delay_s = topics.reaper_delay.delay_s
        if delay_s is None:
            raise ValueError(f"{topics.reaper_delay.name} is not a delay topic")
        self.delay_s = delay_s
        self._owned: dict[int, PartitionState] = {}
        self._looks: list[tuple[float, int, int, str, str]] = []
        self._look_seq = 0
        self._wake = asyncio.Event()
        self._feed_changed = asyncio.Event()
        self._feed_positions: dict[TopicPartition, int] = {}
        self._feed_dropped: set[TopicPartition] = set()
        self._producer: AIOKafkaProducer | None = None
        self._feed: AIOKafkaConsumer | None = None
        self._delayed: DelayedConsumer | None = None
        self.metrics = Metrics()

    # ---------------------------------------------------------------- lifecycle

    def ready(self) -> bool:
        return self._delayed is not None and self._delayed.ready.is_set()

    def live_tickets(self) -> int:
        return sum(state.live for state in list(self._owned.values()))

    def owned_partitions(self) -> list[int]:
        return sorted(self._owned)

    async def run(self) -> None:
        self._producer = make_producer(self._kafka, linger_ms=5)
        await self._producer.start()
        self._feed = make_consumer(
            self._kafka,
            group_id=self._options.heartbeat_group_id,
            fetch_max_wait_ms=20,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await self._feed.start()
        self._delayed = DelayedConsumer(
            self._kafka,
            self._topics.reaper_delay.name,
            self.delay_s,
            self._on_due,
            group_id=self._options.group_id,
            listener=self,
            session_timeout_ms=self._options.session_timeout_ms,
        )
        tasks = [
            asyncio.create_task(self._delayed.run(), name="delayed"),
            asyncio.create_task(self._feed_loop(), name="feed"),
            asyncio.create_task(self._look_loop(), name="looks"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._feed.stop()
            await self._producer.stop()

    # ---------------------------------------------------------------- ownership and recovery

    async def on_assigned(self, partitions: list[int]) -> None:
        for partition in partitions:
            started = time.monotonic()
            state, positions = await self._recover(partition)
            self._owned[partition] = state
            self._feed_positions.update(positions)
            self._feed_changed.set()
            for room_id, room in state.rooms.items():
                for ticket_id, entry in room.tickets.items():
                    self._arm(partition, room_id, ticket_id, entry, self._first_look(entry, room))
            await self._flush_unscheduled(state)
            self.metrics.recoveries += 1
            self.metrics.last_recovery_s = round(time.monotonic() - started, 3)
            log.info(
                "reaper_partition_recovered",
                partition=partition,
                rooms=len(state.rooms),
                live_tickets=state.live,
                recovery_s=self.metrics.last_recovery_s,
            )

    async def on_revoked(self, partitions: list[int]) -> None:
        for partition in partitions:
            self._owned.pop(partition, None)
            for topic in (self._topics.room_events.name, self._topics.heartbeats.name):
                tp = TopicPartition(topic, partition)
                self._feed_positions.pop(tp, None)
                self._feed_dropped.add(tp)
        self._feed_changed.set()
        log.info("reaper_partitions_released", partitions=partitions)

    async def _recover(self, partition: int) -> tuple[PartitionState, dict[TopicPartition, int]]:
        state = PartitionState(partition)
        events_tp = TopicPartition(self._topics.room_events.name, partition)
        beats_tp = TopicPartition(self._topics.heartbeats.name, partition)
        checks_tp = TopicPartition(self._topics.reaper_delay.name, partition)
        reader = make_consumer(self._kafka, max_partition_fetch_bytes=8 * 1024 * 1024)
        await reader.start()
        try:
            # Which tickets are live, and each room's timeout: the whole log of the partition.
            events_end = await _read(reader, events_tp, 0, lambda r: self._fold_event(state, r, live=False))
            state.unscheduled.clear()

            # When each was last heard from: only heartbeats recent enough to keep anyone alive.
            assert self._feed is not None
            now = self._clock()
            since = heartbeat_replay_start(now, state.max_timeout_s(), self._options.recovery_margin_s)
            found = await reader.offsets_for_times({beats_tp: int(since * 1000)})
            start = found[beats_tp].offset if found.get(beats_tp) is not None else None
            dead_letter_from = await self._feed.committed(beats_tp) or 0
            poison: list[Record] = []

            def fold_beat(record: Record) -> None:
                if not self._fold_heartbeat(state, record) and record.offset >= dead_letter_from:
                    poison.append(record)

            heard_at = self._clock()
            beats_end = await _read(reader, beats_tp, start, fold_beat)
            state.heard_until = heard_at - FETCH_SLACK_S
            for record in poison:
                await self._dead_letter(record, "undecodable heartbeat")

            # Which checks are pending: everything the group has not committed past.
            assert self._delayed is not None
            pending_from = await self._delayed.committed(partition)
            await _read(reader, checks_tp, pending_from, lambda r: self._note_pending_check(state, r))
        finally:
            await reader.stop()
        state.unscheduled = {
            room_id for room_id, room in state.rooms.items() if room.tickets and not room.scheduled_until
        }
        return state, {events_tp: events_end, beats_tp: beats_end}

    def _note_pending_check(self, state: PartitionState, record: Record) -> None:
        try:
            check = _decode_check(record)
        except DecodeError:
            return  # handed to the handler when due, which dead-letters it
        room = state.rooms.get(check.room_id)
        if room is not None:
            room.scheduled_until = max(room.scheduled_until, due_at(record, self.delay_s))

    # ---------------------------------------------------------------- the feed: room-events + heartbeats

    async def _feed_loop(self) -> None:
        feed = self._feed
        assert feed is not None
        last_commit = time.monotonic()
        while True:
            if self._feed_changed.is_set():
                self._feed_changed.clear()
                await self._reassign_feed(feed)
            if not feed.assignment():
                await self._feed_changed.wait()
                continue
            batches = await feed.getmany(timeout_ms=100, max_records=5000)
            poison: list[Record] = []
            for tp, records in batches.items():
                state = self._owned.get(tp.partition)
                if state is None:
                    continue
                if tp.topic == self._topics.heartbeats.name:
                    for record in records:
                        if not self._fold_heartbeat(state, record):
                            poison.append(record)
                    # Heartbeats are appended in about the order they are stamped: one read means all
                    # stamped before it are read too, up to the publish latency the grace covers.
                    state.heard_until = max(state.heard_until, records[-1].timestamp / 1000.0 - FETCH_SLACK_S)
                else:
                    for record in records:
                        self._fold_event(state, record, live=True)
            for record in poison:
                await self._dead_letter(record, "undecodable heartbeat")
            await self._update_heard_until(feed)
            for state in list(self._owned.values()):
                if state.unscheduled:
                    await self._flush_unscheduled(state)
            if time.monotonic() - last_commit > HEARTBEAT_COMMIT_EVERY_S:
                last_commit = time.monotonic()
                await self._commit_heartbeats(feed)

    async def _reassign_feed(self, feed: AIOKafkaConsumer) -> None:
        positions: dict[TopicPartition, int] = {}
        for tp in feed.assignment():
            if tp not in self._feed_dropped and tp not in self._feed_positions:
                positions[tp] = await feed.position(tp)
        positions.update(self._feed_positions)
        self._feed_positions = {}
        self._feed_dropped = set()
        feed.assign(list(positions))
        for tp, offset in positions.items():
            feed.seek(tp, offset)

    async def _update_heard_until(self, feed: AIOKafkaConsumer) -> None:
        for tp in feed.assignment():
            if tp.topic != self._topics.heartbeats.name:
                continue
            state = self._owned.get(tp.partition)
            highwater = feed.highwater(tp)
            polled_ms = feed.last_poll_timestamp(tp)
            if state is None or highwater is None or polled_ms is None:
                continue
            if await feed.position(tp) >= highwater:
                state.heard_until = max(state.heard_until, polled_ms / 1000.0 - FETCH_SLACK_S)

    async def _commit_heartbeats(self, feed: AIOKafkaConsumer) -> None:
        offsets = {tp: await feed.position(tp) for tp in feed.assignment() if tp.topic == self._topics.heartbeats.name}
        if offsets:
            try:
                await feed.commit(offsets)
            except Exception as exc:  # noqa: BLE001 - only the dead-letter bookmark; retried next second
                log.warning("heartbeat_commit_failed", error=repr(exc))

    def _fold_event(self, state: PartitionState, record: Record, *, live: bool) -> None:
        self.metrics.room_events += 1
        try:
            event = decode(record.value, record.headers)
        except DecodeError as exc:
            # The sequencer writes room-events and owns their dead letters; a reader only skips.
            log.error("room_event_undecodable", partition=record.partition, offset=record.offset, error=str(exc))
            return
        if not isinstance(event, ROOM_EVENT_TYPES):
            return
        shortened = state.apply(event)
        if isinstance(event, TicketIssued):
            _, issued = state.ticket(event.room_id, event.ticket_id)
            if issued is not None and issued.trace is None:
                issued.trace = extract_context(record.headers)
        if not live:
            return
        if shortened is not None:
            self._rearm_room(state.partition, event.room_id, shortened)
        elif isinstance(event, TicketIssued):
            room, entry = state.ticket(event.room_id, event.ticket_id)
            if room is not None and entry is not None and room.scheduled_until:
                # The room's running check may come after this ticket's deadline (a short timeout).
                self._arm(state.partition, event.room_id, event.ticket_id, entry, self._first_look(entry, room))

    def _fold_heartbeat(self, state: PartitionState, record: Record) -> bool:
        """Fold one heartbeat record in; False if it is poison."""
        self.metrics.heartbeats += 1
        try:
            message = decode(record.value, record.headers)
        except DecodeError:
            return False
        if not isinstance(message, Heartbeat):
            return False
        state.apply(message)
        return True

    def _first_look(self, entry: TicketEntry, room: RoomEntry) -> float:
        return first_look(entry.last_seen, room.timeout_s, self._options.heartbeat_grace_s)

    def _rearm_room(self, partition: int, room_id: str, room: RoomEntry) -> None:
        for ticket_id, entry in room.tickets.items():
            self._arm(partition, room_id, ticket_id, entry, self._first_look(entry, room))

    # ---------------------------------------------------------------- durable checks

    async def _on_due(self, partition: int, records: Sequence[Record]) -> None:
        """The due checks of one partition, as one span linked to whoever wrote each check."""
        links = [Link(span_context) for span_context in map(_span_context, records) if span_context.is_valid]
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": self._topics.reaper_delay.name,
            "messaging.destination.partition.id": str(partition),
            "messaging.batch.message_count": len(records),
            "messaging.consumer.group.name": self._options.group_id,
        }
        with tracer.start_as_current_span("reaper check", kind=SpanKind.CONSUMER, links=links, attributes=attributes):
            await self._check_due(partition, records)

    async def _check_due(self, partition: int, records: Sequence[Record]) -> None:
        state = self._owned.get(partition)
        if state is None:
            return
        options = self._options
        now = self._clock()
        timestamp_ms, next_due = self._next_check(now)
        again: list[str] = []
        expiries: list[tuple[str, str, TicketEntry]] = []
        for record in records:
            try:
                check = _decode_check(record)
            except DecodeError as exc:
                await self._dead_letter(record, exc)
                continue
            self.metrics.check_records_handled += 1
            room = state.rooms.get(check.room_id)
            if room is None or is_superseded(room.scheduled_until, due_at(record, self.delay_s)):
                continue  # a duplicate replayed after a crash: the room's latest check goes on
            if not room.tickets:
                room.scheduled_until = 0.0  # nobody left to check: the next issued ticket starts a new chain
                continue
            room.scheduled_until = next_due
            again.append(check.room_id)
            for ticket_id, entry in room.tickets.items():
                self.metrics.ticket_checks += 1
                decision = decide_check(
                    entry.clock(),
                    timeout_s=room.timeout_s,
                    now=now,
                    next_check_due=next_due,
                    heard_until=state.heard_until,
                    grace_s=options.heartbeat_grace_s,
                    resend_after_s=options.resend_expire_after_s,
                )
                if decision.expire:
                    expiries.append((check.room_id, ticket_id, entry))
                if decision.look_at is not None:
                    self._arm(partition, check.room_id, ticket_id, entry, decision.look_at)
        deliveries = self._write_checks(state, again, now, timestamp_ms)
        deliveries += self._request_expiries(state, expiries, now)
        await _settle(await asyncio.gather(*deliveries))

    def _next_check(self, now: float) -> tuple[int, float]:
        """The timestamp of a check written now, and when it will be due (exactly as ``due_at`` reads it)."""
        timestamp_ms = int(check_timestamp(now, self._options.check_tick_s) * 1000)
        return timestamp_ms, timestamp_ms / 1000.0 + self.delay_s

    async def _flush_unscheduled(self, state: PartitionState) -> None:
        """Start the check chain of rooms that just got their first live ticket."""
        rooms, state.unscheduled = sorted(state.unscheduled), set()
        now = self._clock()
        timestamp_ms, due = self._next_check(now)
        started = []
        for room_id in rooms:
            room = state.rooms.get(room_id)
            if room is None or not room.tickets or room.scheduled_until:
                continue
            room.scheduled_until = due
            started.append(room_id)
            for ticket_id, entry in room.tickets.items():
                look = self._first_look(entry, room)
                if look < due:
                    self._arm(state.partition, room_id, ticket_id, entry, look)
        await _settle(await asyncio.gather(*self._write_checks(state, started, now, timestamp_ms)))

    def _write_checks(self, state: PartitionState, rooms: list[str], now: float, timestamp_ms: int) -> list[Any]:
        """Queue one check record per room, stamped to fall due with the tick; returns the sends."""
        producer = self._producer
        assert producer is not None
        sends = []
        for room_id in rooms:
            check = ExpiryCheck(room_id=room_id, scheduled_at=now)
            with produce_span(self._topics.reaper_delay.name, check, state.partition):
                record = encode(check, outgoing_headers())
                sends.append(
                    producer.send(
                        self._topics.reaper_delay.name,
                        record.value,
                        key=record.key,
                        partition=state.partition,
                        timestamp_ms=timestamp_ms,
                        headers=record.headers,
                    )
                )
            self.metrics.check_records_written += 1
        return sends

    # ---------------------------------------------------------------- the final approach

    def _arm(self, partition: int, room_id: str, ticket_id: str, entry: TicketEntry, at: float) -> None:
        if entry.look_at is not None and entry.look_at <= at:
            return  # an earlier look is armed; it arms the next one itself
        entry.look_at = at
        self._look_seq += 1
        heapq.heappush(self._looks, (at, self._look_seq, partition, room_id, ticket_id))
        if self._looks[0][1] == self._look_seq:
            self._wake.set()

    async def _look_loop(self) -> None:
        options = self._options
        while True:
            now = self._clock()
            if not self._looks or self._looks[0][0] > now:
                wait = self._looks[0][0] - now if self._looks else 1.0
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                except TimeoutError:
                    pass
                continue
            expiries_by_partition: dict[int, list[tuple[str, str, TicketEntry]]] = {}
            while self._looks and self._looks[0][0] <= now:
                at, _, partition, room_id, ticket_id = heapq.heappop(self._looks)
                state = self._owned.get(partition)
                if state is None:
                    continue
                room, entry = state.ticket(room_id, ticket_id)
                if room is None or entry is None or entry.look_at != at:
                    continue  # ended, or a stale heap entry
                entry.look_at = None
                self.metrics.looks += 1
                decision = decide_look(
                    entry.clock(),
                    timeout_s=room.timeout_s,
                    now=now,
                    next_check_due=room.scheduled_until,
                    heard_until=state.heard_until,
                    grace_s=options.heartbeat_grace_s,
                    retry_s=LOOK_RETRY_S,
                )
                if decision.expire:
                    expiries_by_partition.setdefault(partition, []).append((room_id, ticket_id, entry))
                if decision.look_at is not None:
                    self._arm(partition, room_id, ticket_id, entry, decision.look_at)
            deliveries = []
            for partition, expiries in expiries_by_partition.items():
                state = self._owned.get(partition)
                if state is not None:
                    deliveries += self._request_expiries(state, expiries, now)
            if deliveries:
                await _settle(await asyncio.gather(*deliveries))

    # ---------------------------------------------------------------- outputs

    def _request_expiries(
        self, state: PartitionState, expiries: list[tuple[str, str, TicketEntry]], now: float
    ) -> list[Any]:
        producer = self._producer
        assert producer is not None
        sends = []
        for room_id, ticket_id, entry in expiries:
            entry.expire_sent_at = now
            command = ExpireRequested(
                room_id=room_id, ticket_id=ticket_id, requested_at=now, last_heartbeat_at=entry.last_heartbeat_at
            )
            # A child of the ticket's issue, so the join's trace shows its expiry; linked to the check
            # (or nothing, for a look) that found the silence.
            current = trace.get_current_span().get_span_context()
            with (
                tracer.start_as_current_span(
                    "reaper expire",
                    context=entry.trace,
                    links=[Link(current)] if current.is_valid else None,
                    attributes={
                        "waitroom.room_id": room_id,
                        "waitroom.ticket_id": ticket_id,
                        "waitroom.silent_s": round(now - entry.last_seen, 3),
                    },
                ),
                produce_span(self._topics.commands.name, command, state.partition),
            ):
                record = encode(command, outgoing_headers())
                sends.append(
                    producer.send(
                        self._topics.commands.name,
                        record.value,
                        key=record.key,
                        partition=state.partition,
                        headers=record.headers,
                    )
                )
            self.metrics.expiries_requested += 1
            log.info(
                "expiry_requested",
                room_id=room_id,
                ticket_id=ticket_id,
                silent_s=round(now - entry.last_seen, 3),
                last_heartbeat_at=entry.last_heartbeat_at,
            )
        return sends

    async def _dead_letter(self, record: Record, error: BaseException | str) -> None:
        assert self._producer is not None
        self.metrics.dead_lettered += 1
        await (await send_to_dead_letter(self._producer, record, error))


def _span_context(record: Record) -> trace.SpanContext:
    return trace.get_current_span(extract_context(record.headers)).get_span_context()


def _decode_check(record: Record) -> ExpiryCheck:
    message: Message = decode(record.value, record.headers)
    if not isinstance(message, ExpiryCheck):
        raise DecodeError(f"{message.TYPE} is not an expiry check")
    return message


async def _settle(delivered: list[Any]) -> None:
    """``producer.send`` returned delivery futures; wait until the broker has every record."""
    if delivered:
        await asyncio.gather(*delivered)


async def _read(reader: AIOKafkaConsumer, tp: TopicPartition, start: int | None, fold: Callable[[Record], None]) -> int:
    """Fold ``tp`` from ``start`` (None: its end, 0 or less: its beginning) to its current end; return the end."""
    reader.assign([tp])
    end = (await reader.end_offsets([tp]))[tp]
    if start is None:
        return end
    if start <= 0:
        await reader.seek_to_beginning(tp)
    else:
        reader.seek(tp, start)
    while await reader.position(tp) < end:
        batch = await reader.getmany(tp, timeout_ms=500, max_records=10_000)
        for record in batch.get(tp, []):
            fold(record)
    return end
