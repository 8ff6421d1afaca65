"""The final approach: in-memory looks at tickets' exact deadlines (docs/adr/0003-reaper-precision.md).

A look is armed when a ticket's deadline falls before its room's next durable check, so expiry
lands within the grace period instead of within the delay. Looks need no durability: after a crash
recovery arms one for every live ticket again.

:class:`Looks` is the heap, with a clock-free API (``arm``, ``due(now)``, ``next_at``);
:class:`FinalApproach` decides the due looks with the pure rule and runs the timer loop.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass

from waitroom_core.expiry import decide_look, first_look
from waitroom_platform.runtime import Component
from waitroom_reaper.options import Metrics
from waitroom_reaper.output import Delivery, Expiry, Output, settle
from waitroom_reaper.state import Owned, PartitionState, RoomEntry, TicketEntry

#: a look that found the heartbeats not read up to the deadline yet tries again this much later
LOOK_RETRY_S = 0.02
#: how long the loop sleeps when no look is armed (an arm wakes it at once)
IDLE_S = 1.0


@dataclass(frozen=True, slots=True)
class DueLook:
    partition: int
    room_id: str
    ticket_id: str
    state: PartitionState
    room: RoomEntry
    entry: TicketEntry


class Looks:
    """The armed looks of every owned partition: one live heap entry per ticket at most."""

    def __init__(self, owned: Owned, grace_s: float) -> None:
        self._owned = owned
        self._grace_s = grace_s
        self._heap: list[tuple[float, int, int, str, str]] = []
        self._seq = 0
        #: set when a look is armed before every other one: the loop's wait is too long
        self.woken = asyncio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def next_at(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def arm(self, partition: int, room_id: str, ticket_id: str, entry: TicketEntry, at: float) -> None:
        if entry.look_at is not None and entry.look_at <= at:
            return  # an earlier look is armed; it arms the next one itself
        entry.look_at = at
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, partition, room_id, ticket_id))
        if self._heap[0][1] == self._seq:
            self.woken.set()

    def arm_first(self, partition: int, room_id: str, ticket_id: str, entry: TicketEntry, room: RoomEntry) -> None:
        """Arm a look at the earliest moment the ticket can be silent."""
        self.arm(partition, room_id, ticket_id, entry, self.first_look(entry, room))

    def arm_room(self, partition: int, room_id: str, room: RoomEntry) -> None:
        for ticket_id, entry in room.tickets.items():
            self.arm_first(partition, room_id, ticket_id, entry, room)

    def first_look(self, entry: TicketEntry, room: RoomEntry) -> float:
        return first_look(entry.last_seen, room.timeout_s, self._grace_s)

    def owns(self, partition: int) -> bool:
        return partition in self._owned

    def due(self, now: float) -> list[DueLook]:
        """Take every look due at ``now`` that still stands (its ticket live, owned, not re-armed)."""
        due: list[DueLook] = []
        while self._heap and self._heap[0][0] <= now:
            at, _, partition, room_id, ticket_id = heapq.heappop(self._heap)
            state = self._owned.get(partition)
            if state is None:
                continue
            room, entry = state.ticket(room_id, ticket_id)
            if room is None or entry is None or entry.look_at != at:
                continue  # ended, or a stale heap entry
            entry.look_at = None
            due.append(DueLook(partition, room_id, ticket_id, state, room, entry))
        return due


class FinalApproach(Component):
    """Looks at each due ticket: expires it if still silent, or looks again at its new deadline."""

    name = "looks"

    def __init__(
        self,
        looks: Looks,
        output: Output,
        metrics: Metrics,
        grace_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._looks = looks
        self._output = output
        self._metrics = metrics
        self._grace_s = grace_s
        self._clock = clock

    async def run(self) -> None:
        looks = self._looks
        while True:
            now = self._clock()
            next_at = looks.next_at
            if next_at is None or next_at > now:
                looks.woken.clear()
                try:
                    await asyncio.wait_for(looks.woken.wait(), timeout=IDLE_S if next_at is None else next_at - now)
                except TimeoutError:
                    pass
                continue
            await self.look(now)

    async def look(self, now: float) -> None:
        """Decide every look due at ``now``; returns once the expiries asked for are on the broker."""
        expiries: dict[int, list[Expiry]] = {}
        for due in self._looks.due(now):
            self._metrics.looks += 1
            decision = decide_look(
                due.entry.clock(),
                timeout_s=due.room.timeout_s,
                now=now,
                next_check_due=due.room.scheduled_until,
                heard_until=due.state.heard_until,
                grace_s=self._grace_s,
                retry_s=LOOK_RETRY_S,
            )
            if decision.expire:
                expiries.setdefault(due.partition, []).append((due.room_id, due.ticket_id, due.entry))
            if decision.look_at is not None:
                self._looks.arm(due.partition, due.room_id, due.ticket_id, due.entry, decision.look_at)
        deliveries: list[Delivery] = []
        for partition, silent in expiries.items():
            if self._looks.owns(partition):  # not revoked while the others were queued
                deliveries += await self._output.request_expiries(partition, silent, now)
        await settle(deliveries)
