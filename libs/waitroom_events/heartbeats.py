"""Heartbeats on ``waitroom.heartbeats``: a ticket holder is still there."""

from __future__ import annotations

from dataclasses import dataclass

from waitroom_events.base import Message, message_type


@message_type("waitroom.heartbeat.v1")
@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    ticket_id: str
    at: float
