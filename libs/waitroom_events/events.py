"""Room events: the facts on ``waitroom.room-events``, the source of truth.

Every room's state (sequencer, API read model, stats) is a fold of these over the log.
"""

from __future__ import annotations

from dataclasses import dataclass

from waitroom_events.base import Message, added_later, message_type


@message_type("waitroom.room.configured.v1")
@dataclass(frozen=True, slots=True)
class RoomConfigured(Message):
    at: float
    capacity: int
    heartbeat_timeout_s: float
    heartbeat_interval_s: float
    target_url: str | None
    paused: bool
    #: the waiting page's title, message, logo URL and colours (waitroom_core.room.BRANDING_KEYS)
    branding: dict[str, str] | None = added_later()


@message_type("waitroom.ticket.issued.v1")
@dataclass(frozen=True, slots=True)
class TicketIssued(Message):
    ticket_id: str
    queue_no: int
    at: float


@message_type("waitroom.ticket.admitted.v1")
@dataclass(frozen=True, slots=True)
class TicketAdmitted(Message):
    ticket_id: str
    queue_no: int
    at: float
    manual: bool = False
    #: when the ticket was issued (its ``TicketIssued.at``), so a reader gets the wait from this
    #: event alone; absent from admissions written before it was added (docs/adr/0010)
    issued_at: float | None = added_later()


@message_type("waitroom.ticket.left.v1")
@dataclass(frozen=True, slots=True)
class TicketLeft(Message):
    ticket_id: str
    queue_no: int
    at: float
    was_admitted: bool


@message_type("waitroom.ticket.expired.v1")
@dataclass(frozen=True, slots=True)
class TicketExpired(Message):
    ticket_id: str
    queue_no: int
    at: float
    was_admitted: bool
    last_heartbeat_at: float | None = None


@message_type("waitroom.join.rejected.v1")
@dataclass(frozen=True, slots=True)
class JoinRejected(Message):
    """A join the sequencer refused (the room does not exist), so the waiting API call can answer."""

    ticket_id: str
    at: float
    reason: str


@message_type("waitroom.room.archived.v1")
@dataclass(frozen=True, slots=True)
class RoomArchived(Message):
    """The room is retired: its state is dropped by every reader and left out of snapshots from
    here on (its history stays in the log). A room configured later under the same id is a new
    room, numbered from 1."""

    at: float
    last_queue_no: int


#: every event on room-events (usable with ``isinstance``)
RoomEvent = RoomConfigured | TicketIssued | TicketAdmitted | TicketLeft | TicketExpired | JoinRejected | RoomArchived
#: the room-events that change a room's state (a rejected join only answers the waiting call)
StateEvent = RoomConfigured | TicketIssued | TicketAdmitted | TicketLeft | TicketExpired | RoomArchived
