"""Expiry checks on the reaper's delay topic (``waitroom.reaper.delay-10s``).

A check is a durable reminder, not a fact: "look at every live ticket of this room again when this
record is due" (its timestamp plus the topic's delay). Only the reaper reads and writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from waitroom_events.base import Message, message_type


@message_type("waitroom.reaper.expiry-check.v1")
@dataclass(frozen=True, slots=True)
class ExpiryCheck(Message):
    """Check the live tickets of ``room_id`` once due; ``scheduled_at`` is when it was written.

    One pending check per room covers all of its tickets, so the schedule costs records in
    proportion to rooms, not to tickets (docs/adr/0003-reaper-precision.md).
    """

    scheduled_at: float
