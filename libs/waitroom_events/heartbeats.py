"""Heartbeats on ``waitroom.heartbeats``: a ticket holder is still there."""

from __future__ import annotations

from dataclasses import dataclass

from waitroom_events.base import Message, message_type


@message_type("waitroom.heartbeat.v1")
@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    ticket_id: str
    at: float


@message_type("waitroom.heartbeat-batch.v1")
@dataclass(frozen=True, slots=True)
class HeartbeatBatch(Message):
    """Heartbeats of one room coalesced by an API process over a short window (one record, not one
    per visitor). ``at`` is when the batch was written (at most the window after its heartbeats;
    close to the record's own timestamp, which readers of the topic rely on). Each ticket appears
    at most once."""

    ticket_ids: list[str]
    at: float

    def heartbeats(self) -> list[Heartbeat]:
        return [Heartbeat(room_id=self.room_id, ticket_id=ticket_id, at=self.at) for ticket_id in self.ticket_ids]


#: what the heartbeats topic carries; readers accept both
HEARTBEAT_TYPES = (Heartbeat, HeartbeatBatch)
