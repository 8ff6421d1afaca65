"""The heartbeat feed: room-events and heartbeats of the owned partitions, folded as they are written.

The consumer skeleton over two topics, by manual assignment (the partitions follow the delay
topic's group, whatever its assignor: co-partitioning holds). Per topic it accepts:

* heartbeats (``Heartbeat``, and ``HeartbeatBatch`` of the API's coalescing): when each ticket was
  last heard from. Poison goes to ``heartbeats.dlq``; the position is committed about every second
  to the feed's own group, only as a bookmark of how far that has been done (recovery re-reads older heartbeats without
  dead-lettering them twice);
* room-events (``RoomEvent``): tickets issued and ended, timeouts configured. Poison is only
  logged: the sequencer writes room-events and owns their dead letters.

Before each fetch the assignment follows what recovery handed over or revocation took away. After
each fetch ``heard_until`` moves on (docs/adr/0003-reaper-precision.md: silence must be proven),
and rooms that got their first live ticket start their check chain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from waitroom_events.base import Message
from waitroom_events.events import RoomEvent, TicketIssued
from waitroom_events.heartbeats import HEARTBEAT_TYPES
from waitroom_events.topics import TopicRegistry
from waitroom_platform.consume import ConsumerLoop, Poison, Record
from waitroom_platform.runtime import Component
from waitroom_reaper.looks import Looks
from waitroom_reaper.options import Metrics
from waitroom_reaper.output import Output
from waitroom_reaper.schedule import Schedule
from waitroom_reaper.state import FETCH_SLACK_S, Owned, PartitionState

log = structlog.get_logger()

HEARTBEAT_COMMIT_EVERY_S = 1.0


class HeartbeatFeed(ConsumerLoop[Message], Component):
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topics: TopicRegistry,
        owned: Owned,
        looks: Looks,
        schedule: Schedule,
        output: Output,
        metrics: Metrics,
        *,
        bookmark_every_s: float = HEARTBEAT_COMMIT_EVERY_S,
    ) -> None:
        """``consumer``: not started, with the feed's group id (for the bookmark) and no subscription."""
        self._heartbeats = topics.heartbeats.name
        self._events = topics.room_events.name
        super().__init__(
            consumer,
            # every room event: a JoinRejected changes nothing here, but it is no poison either
            {self._heartbeats: HEARTBEAT_TYPES, self._events: RoomEvent},
            self._fold,
            commit=False,
            max_records=5000,
            fetch_timeout_ms=100,
            name="heartbeat-feed",
        )
        self._owned = owned
        self._looks = looks
        self._schedule = schedule
        self._output = output
        self._metrics = metrics
        self._changed = asyncio.Event()
        self._positions: dict[TopicPartition, int] = {}
        self._dropped: set[TopicPartition] = set()
        self._bookmark_every_s = bookmark_every_s
        self._last_commit = time.monotonic()

    # ---------------------------------------------------------------- lifecycle and ownership

    async def start(self) -> None:
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()

    def follow(self, positions: Mapping[TopicPartition, int]) -> None:
        """Read these partitions from these offsets (where recovery stopped), from the next fetch on."""
        self._positions.update(positions)
        self._dropped.difference_update(positions)
        self._changed.set()

    def release(self, partition: int) -> None:
        for topic in (self._events, self._heartbeats):
            tp = TopicPartition(topic, partition)
            self._positions.pop(tp, None)
            self._dropped.add(tp)
        self._changed.set()

    async def bookmark(self, partition: int) -> int:
        """Heartbeats before this offset of ``partition`` have been dead-lettered where needed."""
        return await self.consumer.committed(TopicPartition(self._heartbeats, partition)) or 0

    # ---------------------------------------------------------------- the skeleton's steps

    async def before_fetch(self) -> None:
        while True:
            if self._changed.is_set():
                self._changed.clear()
                await self._reassign()
            if self.consumer.assignment():
                return
            await self._changed.wait()

    async def process(self, tp: TopicPartition, records: Sequence[Record]) -> bool:
        if tp.partition not in self._owned:
            return True  # released since the fetch
        if tp.topic == self._heartbeats:
            self._metrics.heartbeats += len(records)
        else:
            self._metrics.room_events += len(records)
        return await super().process(tp, records)

    async def dead_letter(self, tp: TopicPartition, poison: Sequence[Poison]) -> None:
        if tp.topic == self._heartbeats:
            await self._output.dead_letter(poison)
            return
        for record, error in poison:
            log.error("room_event_undecodable", partition=record.partition, offset=record.offset, error=str(error))

    async def after_fetch(self, batches: Sequence[tuple[TopicPartition, list[Record]]]) -> None:
        for tp, records in batches:
            state = self._owned.get(tp.partition)
            if tp.topic == self._heartbeats and records and state is not None:
                # Heartbeats are appended in about the order they are stamped: one read means all
                # stamped before it are read too, up to the publish latency the grace covers.
                state.heard_until = max(state.heard_until, records[-1].timestamp / 1000.0 - FETCH_SLACK_S)
        await self._heard_to_the_end()
        for state in list(self._owned.values()):
            if state.unscheduled:
                await self._schedule.start_chains(state)
        if time.monotonic() - self._last_commit >= self._bookmark_every_s:
            self._last_commit = time.monotonic()
            await self._commit_bookmarks()

    # ---------------------------------------------------------------- folding

    async def _fold(self, tp: TopicPartition, messages: Sequence[tuple[Record, Message]]) -> None:
        state = self._owned.get(tp.partition)
        if state is None:
            return
        if tp.topic == self._heartbeats:
            for _, heartbeat in messages:
                state.apply(heartbeat)
            return
        for record, event in messages:
            self._fold_event(state, record, event)

    def _fold_event(self, state: PartitionState, record: Record, event: Message) -> None:
        shortened = state.apply_record(event, record.headers)
        if shortened is not None:
            self._looks.arm_room(state.partition, event.room_id, shortened)
        elif isinstance(event, TicketIssued):
            room, entry = state.ticket(event.room_id, event.ticket_id)
            if room is not None and entry is not None and room.scheduled_until:
                # The room's running check may come after this ticket's deadline (a short timeout).
                self._looks.arm_first(state.partition, event.room_id, event.ticket_id, entry, room)

    # ---------------------------------------------------------------- positions

    async def _reassign(self) -> None:
        consumer = self.consumer
        positions: dict[TopicPartition, int] = {}
        for tp in consumer.assignment():
            if tp not in self._dropped and tp not in self._positions:
                positions[tp] = await consumer.position(tp)
        positions.update(self._positions)
        self._positions = {}
        self._dropped = set()
        consumer.assign(list(positions))
        for tp, offset in positions.items():
            consumer.seek(tp, offset)

    async def _heard_to_the_end(self) -> None:
        """A fetch that found a heartbeats partition at its end has heard everything written before it."""
        consumer = self.consumer
        for tp in consumer.assignment():
            if tp.topic != self._heartbeats:
                continue
            state = self._owned.get(tp.partition)
            highwater = consumer.highwater(tp)
            polled_ms = consumer.last_poll_timestamp(tp)
            if state is None or highwater is None or polled_ms is None:
                continue
            if await consumer.position(tp) >= highwater:
                state.heard_until = max(state.heard_until, polled_ms / 1000.0 - FETCH_SLACK_S)

    async def _commit_bookmarks(self) -> None:
        consumer = self.consumer
        offsets = {tp: await consumer.position(tp) for tp in consumer.assignment() if tp.topic == self._heartbeats}
        if offsets:
            try:
                await consumer.commit(offsets)
            except Exception as exc:  # noqa: BLE001 - only the dead-letter bookmark; retried next second
                log.warning("heartbeat_commit_failed", error=repr(exc))
