"""Recovery: a newly owned partition's state, rebuilt from the log before any check is judged.

Three reads of partition ``p``, each up to its end now (docs/adr/0003-reaper-precision.md, *Restarts*):

1. room-events from the beginning: which tickets are live, each room's timeout (with snapshots:
   the rooms of the newest valid sequencer snapshot, then the events after it; docs/adr/0007);
2. heartbeats from ``now - max(timeout) - margin``: older ones cannot keep anyone alive. Poison is
   dead-lettered only past the feed's bookmark (what an earlier owner did not park yet);
3. the delay topic from the group's committed offset: each room's latest pending check, so older
   duplicates are dropped as superseded and rooms with none get one.

The reads go through a small :class:`LogReader` port (a Kafka consumer in production, an
in-memory log in tests).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from waitroom_core.expiry import heartbeat_replay_start
from waitroom_events.codec import header
from waitroom_events.events import RoomEvent
from waitroom_events.heartbeats import HEARTBEAT_TYPES
from waitroom_events.reaper import ExpiryCheck
from waitroom_events.topics import TopicRegistry
from waitroom_platform.consume import Poison, Record, decode_as, read_to_end
from waitroom_platform.delayed import due_at
from waitroom_platform.kafka import HEADER_SOURCE_OFFSET, make_reader
from waitroom_platform.settings import KafkaSettings
from waitroom_platform.snapshots import Found, describe
from waitroom_reaper.looks import Looks
from waitroom_reaper.options import Metrics, ReaperOptions
from waitroom_reaper.output import Output
from waitroom_reaper.schedule import Schedule
from waitroom_reaper.state import FETCH_SLACK_S, Owned, PartitionState

log = structlog.get_logger()


class LogReader(Protocol):
    async def read_to_end(self, tp: TopicPartition, fold: Callable[[Record], None], start: int | None) -> int:
        """Fold ``tp`` from ``start`` (0: its beginning; None: fold nothing) to its end now; the end."""

    async def offset_for_time(self, tp: TopicPartition, timestamp_ms: int) -> int | None:
        """The first offset of ``tp`` stamped at or after ``timestamp_ms``; None if there is none."""


class SnapshotSource(Protocol):
    async def load(self, partition: int) -> Found:
        """The newest valid snapshot of ``partition``, if any (``SnapshotStore`` in production)."""


class KafkaLogReader:
    """The port on an aiokafka consumer without a group (assigned to one partition at a time)."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer

    async def read_to_end(self, tp: TopicPartition, fold: Callable[[Record], None], start: int | None) -> int:
        return await read_to_end(self._consumer, tp, fold, start)

    async def offset_for_time(self, tp: TopicPartition, timestamp_ms: int) -> int | None:
        found = (await self._consumer.offsets_for_times({tp: timestamp_ms})).get(tp)
        return found.offset if found is not None else None


@asynccontextmanager
async def kafka_log_reader(kafka: KafkaSettings) -> AsyncIterator[LogReader]:
    """A reader for one recovery: a consumer of its own, stopped when the recovery is done."""
    consumer = make_reader(kafka)
    await consumer.start()
    try:
        yield KafkaLogReader(consumer)
    finally:
        await consumer.stop()


@dataclass
class Recovered:
    state: PartitionState
    #: where the feed goes on reading room-events and heartbeats of the partition
    positions: dict[TopicPartition, int]


class Feed(Protocol):
    """Where a recovered partition is followed on (the heartbeat feed)."""

    def follow(self, positions: Mapping[TopicPartition, int]) -> None: ...

    def release(self, partition: int) -> None: ...

    async def bookmark(self, partition: int) -> int: ...


class Recovery:
    """Takes partitions over (rebuild, then follow, look and schedule) and lets them go."""

    def __init__(
        self,
        open_reader: Callable[[], AbstractAsyncContextManager[LogReader]],
        topics: TopicRegistry,
        owned: Owned,
        feed: Feed,
        looks: Looks,
        schedule: Schedule,
        output: Output,
        metrics: Metrics,
        options: ReaperOptions,
        clock: Callable[[], float] = time.time,
        snapshots: SnapshotSource | None = None,
    ) -> None:
        self._open_reader = open_reader
        self._snapshots = snapshots
        self._topics = topics
        self._owned = owned
        self._feed = feed
        self._looks = looks
        self._schedule = schedule
        self._delay_s = schedule.delay_s
        self._output = output
        self._metrics = metrics
        self._options = options
        self._clock = clock

    async def take_over(self, partition: int, *, checks_from: int) -> None:
        """Own ``partition``: rebuilt, followed by the feed, every live ticket looked at, every room scheduled."""
        started = time.monotonic()
        bookmark = await self._feed.bookmark(partition)
        recovered = await self.rebuild(partition, bookmark=bookmark, checks_from=checks_from)
        state = recovered.state
        self._owned[partition] = state
        self._feed.follow(recovered.positions)
        for room_id, room in state.rooms.items():
            self._looks.arm_room(partition, room_id, room)
        await self._schedule.start_chains(state)
        self._metrics.recoveries += 1
        self._metrics.last_recovery_s = round(time.monotonic() - started, 3)
        log.info(
            "reaper_partition_recovered",
            partition=partition,
            rooms=len(state.rooms),
            live_tickets=state.live,
            recovery_s=self._metrics.last_recovery_s,
        )

    def release(self, partition: int) -> None:
        self._owned.pop(partition, None)
        self._feed.release(partition)

    async def rebuild(self, partition: int, *, bookmark: int, checks_from: int) -> Recovered:
        """``bookmark``: the feed's committed heartbeats offset; ``checks_from``: the group's on the delay topic."""
        state = PartitionState(partition)
        events_tp = TopicPartition(self._topics.room_events.name, partition)
        beats_tp = TopicPartition(self._topics.heartbeats.name, partition)
        checks_tp = TopicPartition(self._topics.reaper_delay.name, partition)
        poison: list[Poison] = []
        events_from, replay_from = 0, 0
        if self._snapshots is not None:
            found = await self._snapshots.load(partition)
            if found.loaded is not None:
                state.seed(found.loaded.rooms.values())
                events_from = found.loaded.manifest.events_offset
                replay_from = found.loaded.manifest.next_offset
            log.info("reaper_snapshot", partition=partition, **describe(found))

        def fold_event(record: Record) -> None:
            source = header(record.headers, HEADER_SOURCE_OFFSET)
            if source is not None and int(source) < replay_from:
                return  # in the snapshot already
            self._metrics.room_events += 1
            event = decode_as(record, RoomEvent)
            if isinstance(event, BaseException):
                # The sequencer writes room-events and owns their dead letters; a reader only skips.
                log.error("room_event_undecodable", partition=record.partition, offset=record.offset, error=str(event))
                return
            state.apply_record(event, record.headers)

        def fold_heartbeat(record: Record) -> None:
            self._metrics.heartbeats += 1
            heartbeat = decode_as(record, HEARTBEAT_TYPES)
            if not isinstance(heartbeat, BaseException):
                state.apply(heartbeat)
            elif record.offset >= bookmark:
                poison.append((record, heartbeat))

        def note_pending_check(record: Record) -> None:
            check = decode_as(record, ExpiryCheck)
            if isinstance(check, BaseException):
                return  # handed to the schedule when due, which dead-letters it
            room = state.rooms.get(check.room_id)
            if room is not None:
                room.scheduled_until = max(room.scheduled_until, due_at(record, self._delay_s))

        async with self._open_reader() as reader:
            events_end = await reader.read_to_end(events_tp, fold_event, events_from)
            state.unscheduled.clear()

            since = heartbeat_replay_start(self._clock(), state.max_timeout_s(), self._options.recovery_margin_s)
            start = await reader.offset_for_time(beats_tp, int(since * 1000))
            heard_at = self._clock()
            beats_end = await reader.read_to_end(beats_tp, fold_heartbeat, start)
            state.heard_until = heard_at - FETCH_SLACK_S
            if poison:
                await self._output.dead_letter(poison)

            await reader.read_to_end(checks_tp, note_pending_check, checks_from)
        state.unscheduled = {
            room_id for room_id, room in state.rooms.items() if room.tickets and not room.scheduled_until
        }
        return Recovered(state, {events_tp: events_end, beats_tp: beats_end})
