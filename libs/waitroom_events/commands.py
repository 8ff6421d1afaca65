"""Commands: requests for the room's single writer (the sequencer) on ``waitroom.commands``.

A command is a wish, not a fact; the sequencer decides what, if anything, happens.
"""

from __future__ import annotations

from dataclasses import dataclass

from waitroom_events.base import Message, added_later, message_type


@message_type("waitroom.join.requested.v1")
@dataclass(frozen=True, slots=True)
class JoinRequested(Message):
    ticket_id: str
    requested_at: float
    idempotency_key: str | None = None


@message_type("waitroom.leave.requested.v1")
@dataclass(frozen=True, slots=True)
class LeaveRequested(Message):
    ticket_id: str
    requested_at: float


@message_type("waitroom.expire.requested.v1")
@dataclass(frozen=True, slots=True)
class ExpireRequested(Message):
    ticket_id: str
    requested_at: float
    last_heartbeat_at: float | None = None
    reason: str = "heartbeat_timeout"


@message_type("waitroom.room.configure-requested.v1")
@dataclass(frozen=True, slots=True)
class RoomConfigureRequested(Message):
    """Create a room or change some of its settings; ``None`` leaves a setting as it is."""

    requested_at: float
    capacity: int | None = None
    heartbeat_timeout_s: float | None = None
    heartbeat_interval_s: float | None = None
    target_url: str | None = None
    paused: bool | None = None
    #: replaces the room's whole branding (``{}`` removes it); ``None`` leaves it as it is
    branding: dict[str, str] | None = added_later()


@message_type("waitroom.admit.requested.v1")
@dataclass(frozen=True, slots=True)
class AdmitRequested(Message):
    """An operator admits the next ``count`` waiting tickets now."""

    requested_at: float
    count: int
    above_capacity: bool = False


@message_type("waitroom.room.archive-requested.v1")
@dataclass(frozen=True, slots=True)
class RoomArchiveRequested(Message):
    """An operator retires a room that has no live ticket left: its state leaves every snapshot."""

    requested_at: float


Command = (
    JoinRequested | LeaveRequested | ExpireRequested | RoomConfigureRequested | AdmitRequested | RoomArchiveRequested
)
