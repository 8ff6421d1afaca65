"""The API's read model: every room, folded from ``room-events`` with the core's ``evolve``.

Every API replica tails every partition, so any replica answers for any room. Join calls wait here
for their ticket to be issued (read-your-writes), and admin calls for their configuration to land.
With snapshots on, it starts from each partition's newest valid sequencer snapshot and tails the
events after it, instead of replaying from offset 0 (see ``_start_from_snapshots``). In the
all-in-one process, the sequencer hands over what it commits (``take_committed``); the tail then
leaves that partition alone while the hand-offs come (``PARK_IDLE_S``, docs/adr/0011).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from waitroom_core.room import RoomState, Ticket, evolve
from waitroom_events.codec import header
from waitroom_events.events import JoinRejected, RoomEvent, TicketIssued
from waitroom_platform.consume import Record
from waitroom_platform.kafka import HEADER_SOURCE_OFFSET
from waitroom_platform.settings import KafkaSettings
from waitroom_platform.snapshots import SnapshotStore, describe
from waitroom_platform.tail import TailedView, TopicTail

log = structlog.get_logger()

#: a partition whose events this process's sequencer hands over is not fetched by the tail while
#: the hand-offs keep coming (ADR 0011 amendment); this long without one, the tail reads it again,
#: from just after what was taken (another owner, or a commit that was not handed over)
PARK_IDLE_S = 0.2


class JoinRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReadModel(TailedView):
    name = "read-model"

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        snapshots: SnapshotStore | None = None,
        keep_ended_s: float | None = None,
    ) -> None:
        self.rooms: dict[str, RoomState] = {}
        #: a ticket ended longer ago than this (its room's clock) is forgotten but for a tombstone
        #: that still answers 410 (docs/adr/0008-columnar-room-state.md); None: kept for good
        self._keep_ended_s = keep_ended_s
        self._snapshots = snapshots
        #: per partition: events of commands before this offset are in the snapshot loaded
        self._replay_from: dict[int, int] = {}
        start_at = None if snapshots is None else self._start_from_snapshots
        self._tail = TopicTail(
            kafka, topic, RoomEvent, self._apply_decoded, start_at=start_at, held_through=self._held_through
        )
        self._ticket_waiters: dict[str, list[asyncio.Future[Ticket]]] = {}
        self._changed = asyncio.Condition()
        self.events_applied = 0
        #: events that came from this process's sequencer (take_committed) before the tail read them
        self.events_taken = 0
        self._listeners: list[Callable[[Sequence[RoomEvent]], None]] = []
        #: per partition: the offset of the last room-event applied, read or taken
        self._applied_upto: dict[int, int] = {}
        #: partitions the tail does not fetch, with the (monotonic) time of their last hand-off
        self._parked: dict[int, float] = {}
        self._park_timers: dict[int, asyncio.TimerHandle] = {}
        #: times a partition was parked (the tail stopped fetching it), for describe()
        self.parks = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await super().start()

    async def stop(self) -> None:
        for timer in self._park_timers.values():
            timer.cancel()
        self._park_timers.clear()
        self._parked.clear()
        await super().stop()

    def _held_through(self, partition: int) -> int:
        """Records taken from this process's sequencer are not decoded again when the tail reads them."""
        return self._applied_upto.get(partition, -1)

    def _apply_decoded(self, records: Sequence[tuple[Record, RoomEvent]]) -> None:
        if not records:
            return
        partition = records[-1][0].partition
        taken = self._applied_upto.get(partition, -1)
        self._applied_upto[partition] = max(taken, records[-1][0].offset)
        if records[0][0].offset <= taken:  # taken from the sequencer already: applied once
            records = [(record, event) for record, event in records if record.offset > taken]
        if self._replay_from:
            records = [(record, event) for record, event in records if not self._in_snapshot(record)]
        self.apply([event for _, event in records])

    def take_committed(self, partition: int, after: int, upto: int, events: Sequence[RoomEvent]) -> None:
        """Events the sequencer of this process just committed, the partition's room-events from
        just after offset ``after`` up to ``upto`` (ADR 0009): applied now if everything up to
        ``after`` is, so a join is answered without waiting for the tail to fetch its events
        (the transaction's markers, then the fetch, about 3 ms on a quiet machine); the tail skips
        them when it reads them. Otherwise (the tail is behind, or already has them) ignored: the
        tail brings them in their turn. Either way every event is applied once, in log order."""
        if self._applied_upto.get(partition) != after or not self.ready():
            if partition in self._parked:
                self._unpark(partition)  # something came between: the tail reads it
            return
        self._applied_upto[partition] = upto
        self.events_taken += len(events)
        self.apply(events)
        # Every event of the partition up to ``upto`` is here, and the owner hands over the next
        # commit too: the tail need not fetch (nor the broker serve) each transaction a second time.
        if self._loop is None:
            return
        fresh = partition not in self._parked
        self._parked[partition] = time.monotonic()
        if fresh:
            self._tail.park(partition)
            self.parks += 1
            self._park_timers[partition] = self._loop.call_later(PARK_IDLE_S, self._check_parked, partition)

    def _check_parked(self, partition: int) -> None:
        last = self._parked.get(partition)
        if last is None or self._loop is None:
            return
        idle = time.monotonic() - last
        if idle >= PARK_IDLE_S:
            self._unpark(partition)
        else:
            self._park_timers[partition] = self._loop.call_later(PARK_IDLE_S - idle, self._check_parked, partition)

    def _unpark(self, partition: int) -> None:
        del self._parked[partition]
        timer = self._park_timers.pop(partition, None)
        if timer is not None:
            timer.cancel()
        self._tail.unpark(partition, self._applied_upto.get(partition, -1) + 1)

    def take_committed_threadsafe(self, partition: int, after: int, upto: int, events: Sequence[RoomEvent]) -> None:
        """:meth:`take_committed` from another thread (the sequencer's own loop), on this model's loop."""
        loop = self._loop
        if loop is None:
            return  # not started: the tail brings them
        try:
            loop.call_soon_threadsafe(self.take_committed, partition, after, upto, events)
        except RuntimeError:
            pass  # the loop is closed: the process is stopping

    # ---------------------------------------------------------------- start from snapshots

    async def _start_from_snapshots(self, partitions: list[int]) -> dict[int, int]:
        """The rooms of each partition's newest valid snapshot; the tail starts where it leaves off."""
        assert self._snapshots is not None
        found = await asyncio.gather(*(self._snapshots.load(p) for p in partitions))
        starts: dict[int, int] = {}
        for partition, result in zip(partitions, found, strict=True):
            if result.loaded is not None:
                for room in result.loaded.rooms.values():
                    room.keep_ended_s = self._keep_ended_s
                self.rooms.update(result.loaded.rooms)
                starts[partition] = result.loaded.manifest.events_offset
                self._replay_from[partition] = result.loaded.manifest.next_offset
            log.info("read_model_snapshot", partition=partition, **describe(result))
        return starts

    def _in_snapshot(self, record: Record) -> bool:
        replay_from = self._replay_from.get(record.partition)
        source = header(record.headers, HEADER_SOURCE_OFFSET)
        if replay_from is None or source is None:
            return False
        if int(source) < replay_from:
            return True
        del self._replay_from[record.partition]  # source offsets only grow: the rest is new
        return False

    def apply(self, events: Sequence[RoomEvent]) -> None:
        """Fold events read from the log, in log order; wakes the calls waiting on them."""
        issued: list[tuple[RoomState, str]] = []
        for event in events:
            if isinstance(event, JoinRejected):
                self._resolve(event.ticket_id, error=JoinRefused(event.reason))
                continue
            room = self.rooms.get(event.room_id)
            if room is None:
                room = self.rooms[event.room_id] = RoomState(event.room_id, self._keep_ended_s)
            evolve(room, event)
            self.events_applied += 1
            if not room.exists:
                del self.rooms[event.room_id]  # archived
            if isinstance(event, TicketIssued) and event.ticket_id in self._ticket_waiters:
                issued.append((room, event.ticket_id))
        # once the batch is folded: a ticket is a view of its row, and an admission in the same
        # batch (a free slot) must show in the join's answer
        for room, ticket_id in issued:
            self._resolve(ticket_id, ticket=room.tickets.get(ticket_id))
        if events:
            asyncio.get_running_loop().create_task(self._notify())
            for listener in self._listeners:
                listener(events)

    def add_listener(self, listener: Callable[[Sequence[RoomEvent]], None]) -> None:
        """Call ``listener`` with every batch of events, once folded (the ticket streams' fan-out)."""
        self._listeners.append(listener)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _resolve(self, ticket_id: str, *, ticket: Ticket | None = None, error: Exception | None = None) -> None:
        for future in self._ticket_waiters.pop(ticket_id, []):
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            elif ticket is not None:
                future.set_result(ticket)

    # ---------------------------------------------------------------- queries

    def room(self, room_id: str) -> RoomState | None:
        room = self.rooms.get(room_id)
        return room if room is not None and room.exists else None

    def ticket(self, room_id: str, ticket_id: str) -> tuple[RoomState, Ticket] | None:
        room = self.room(room_id)
        if room is None:
            return None
        ticket = room.find(ticket_id)  # a forgotten ticket too, as ended: 410, not "being sequenced"
        return None if ticket is None else (room, ticket)

    async def wait_for_ticket(self, room_id: str, ticket_id: str, timeout: float) -> Ticket | None:
        """The ticket once issued, or ``None`` after ``timeout``. Raises JoinRefused if rejected."""
        found = self.ticket(room_id, ticket_id)
        if found is not None:
            return found[1]
        future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        self._ticket_waiters.setdefault(ticket_id, []).append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            waiters = self._ticket_waiters.get(ticket_id)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._ticket_waiters[ticket_id]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        try:
            await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            return predicate()
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "rooms": len(self.rooms),
            "events_applied": self.events_applied,
            "events_taken": self.events_taken,
            "partitions_parked": len(self._parked),
            "parks": self.parks,
            "ready": self.ready(),
        }
