"""What the reaper knows about the rooms of one partition: timeouts and live tickets' clocks.

Folded from room-events (which tickets are live, each room's timeout) and heartbeats (when each was
last heard from). Only live tickets are kept: an ended ticket is forgotten, and a check or a
heartbeat that names it finds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from opentelemetry.context import Context

from waitroom_core.expiry import TicketClock
from waitroom_core.room import DEFAULT_HEARTBEAT_TIMEOUT_S, RoomState
from waitroom_events.base import Message
from waitroom_events.codec import Headers
from waitroom_events.events import RoomConfigured, TicketExpired, TicketIssued, TicketLeft
from waitroom_events.heartbeats import Heartbeat, HeartbeatBatch
from waitroom_platform.kafka import extract_context

#: the broker answers a fetch a little before the consumer sees it: what it said is this old
FETCH_SLACK_S = 0.02


@dataclass(slots=True)
class TicketEntry:
    issued_at: float
    last_heartbeat_at: float | None = None
    expire_sent_at: float | None = None
    #: the armed final-approach look, if any (a heap entry at another time is stale)
    look_at: float | None = None
    #: trace context of the record that issued the ticket: its expiry continues the join's trace
    trace: Context | None = None

    @property
    def last_seen(self) -> float:
        if self.last_heartbeat_at is None or self.last_heartbeat_at < self.issued_at:
            return self.issued_at
        return self.last_heartbeat_at

    def clock(self) -> TicketClock:
        return TicketClock(self.last_seen, self.expire_sent_at)


@dataclass(slots=True)
class RoomEntry:
    timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S
    tickets: dict[str, TicketEntry] = field(default_factory=dict)
    #: due time of the room's latest durable check written or found pending (0: none)
    scheduled_until: float = 0.0


@dataclass
class PartitionState:
    partition: int
    rooms: dict[str, RoomEntry] = field(default_factory=dict)
    #: every heartbeat written before this moment has been read
    heard_until: float = 0.0
    #: rooms with live tickets but no durable check yet (their first ticket was just issued)
    unscheduled: set[str] = field(default_factory=set)

    def ticket(self, room_id: str, ticket_id: str) -> tuple[RoomEntry, TicketEntry] | tuple[None, None]:
        room = self.rooms.get(room_id)
        if room is None:
            return None, None
        entry = room.tickets.get(ticket_id)
        return (room, entry) if entry is not None else (None, None)

    @property
    def live(self) -> int:
        return sum(len(room.tickets) for room in self.rooms.values())

    def max_timeout_s(self) -> float:
        return max((room.timeout_s for room in self.rooms.values()), default=DEFAULT_HEARTBEAT_TIMEOUT_S)

    def apply(self, message: Message) -> RoomEntry | None:
        """Fold one room event or heartbeat in. Returns the room whose timeout got shorter, if any."""
        match message:
            case Heartbeat():
                self._heard(message.room_id, message.ticket_id, message.at)
            case HeartbeatBatch():
                room = self.rooms.get(message.room_id)
                if room is not None:
                    at = message.at
                    for ticket_id in message.ticket_ids:
                        entry = room.tickets.get(ticket_id)
                        if entry is not None and (entry.last_heartbeat_at is None or at > entry.last_heartbeat_at):
                            entry.last_heartbeat_at = at
            case TicketIssued():
                room = self.rooms.setdefault(message.room_id, RoomEntry())
                if message.ticket_id not in room.tickets:
                    room.tickets[message.ticket_id] = TicketEntry(issued_at=message.at)
                    if room.scheduled_until == 0.0:
                        self.unscheduled.add(message.room_id)
            case TicketLeft() | TicketExpired():
                ended = self.rooms.get(message.room_id)
                if ended is not None:
                    ended.tickets.pop(message.ticket_id, None)
            case RoomConfigured():
                configured = self.rooms.setdefault(message.room_id, RoomEntry())
                shorter = message.heartbeat_timeout_s < configured.timeout_s
                configured.timeout_s = message.heartbeat_timeout_s
                return configured if shorter and configured.tickets else None
        return None

    def _heard(self, room_id: str, ticket_id: str, at: float) -> None:
        _, entry = self.ticket(room_id, ticket_id)
        if entry is not None and (entry.last_heartbeat_at is None or at > entry.last_heartbeat_at):
            entry.last_heartbeat_at = at

    def seed(self, rooms: Iterable[RoomState]) -> None:
        """Start from the rooms of a sequencer snapshot: their timeouts and live tickets (the
        tickets' trace context is not in a snapshot: their expiries start traces of their own)."""
        for room in rooms:
            if room.config is None:
                continue
            entry = self.rooms.setdefault(room.room_id, RoomEntry())
            entry.timeout_s = room.config.heartbeat_timeout_s
            for ticket in room.tickets.values():
                if ticket.state.live:
                    entry.tickets[ticket.ticket_id] = TicketEntry(issued_at=ticket.issued_at)

    def apply_record(self, message: Message, headers: Headers | None) -> RoomEntry | None:
        """``apply`` a message read from the log; an issued ticket keeps its record's trace context."""
        shortened = self.apply(message)
        if isinstance(message, TicketIssued):
            _, issued = self.ticket(message.room_id, message.ticket_id)
            if issued is not None and issued.trace is None:
                issued.trace = extract_context(headers)
        return shortened


#: the partitions a reaper owns, by number: shared by its parts, changed only on (re)assignment
Owned: TypeAlias = dict[int, PartitionState]
