"""The expiry rule: when is a ticket silent, and when should the reaper look at it again.

Two clocks drive the reaper (docs/adr/0003-reaper-precision.md):

* the **durable schedule**: one expiry check per room with live tickets on the delay topic, due
  ``delay_s`` after its record timestamp. It covers every live ticket of the room, survives a
  crash, and writes the room's next check when it runs.
* the **final approach**: an in-memory look at a ticket's exact deadline, armed only when that
  deadline falls before the room's next durable check.

A ticket is silent once ``timeout`` has passed since it was last seen (issued or heartbeat) *and*
the reaper has read every heartbeat written up to that deadline plus a grace period: a heartbeat
still in flight must never be mistaken for silence. Pure functions; time is always an argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Two due times closer than this are the same check (record timestamps have millisecond precision).
SAME_CHECK_S = 0.001


@dataclass(frozen=True, slots=True)
class TicketClock:
    """What the reaper knows about one live ticket's time line."""

    last_seen: float
    #: when an expiry was last requested for it (None: never).
    expire_sent_at: float | None = None


@dataclass(frozen=True, slots=True)
class TicketDecision:
    #: ask the sequencer to expire the ticket now
    expire: bool = False
    #: look at it again at this time, in memory (None: the room's next durable check is soon enough)
    look_at: float | None = None


NOTHING = TicketDecision()


def deadline(last_seen: float, timeout_s: float) -> float:
    """The moment a ticket last seen at ``last_seen`` has been silent for ``timeout_s``."""
    return last_seen + timeout_s


def is_silent(last_seen: float, timeout_s: float, now: float, heard_until: float, grace_s: float) -> bool:
    """Silent for at least ``timeout_s``, with every heartbeat up to the deadline plus grace read."""
    due = deadline(last_seen, timeout_s)
    return now >= due and heard_until >= due + grace_s


def first_look(last_seen: float, timeout_s: float, grace_s: float) -> float:
    """The earliest moment ``is_silent`` can become true."""
    return deadline(last_seen, timeout_s) + grace_s


def check_timestamp(now: float, tick_s: float) -> float:
    """The record timestamp of a check written at ``now``: rounded down to the tick.

    Rounding makes the checks of a partition fall due in bunches, one consumer round each, instead
    of one round per room. Rounding down only makes a check earlier, which is safe: a check decides
    on the facts at the moment it runs.
    """
    if tick_s <= 0:
        return now
    return math.floor(now / tick_s) * tick_s


def is_superseded(room_scheduled_until: float, check_due_at: float) -> bool:
    """A check older than the room's latest one is a duplicate (replayed after a crash): drop it."""
    return room_scheduled_until > check_due_at + SAME_CHECK_S


def decide_check(
    ticket: TicketClock,
    *,
    timeout_s: float,
    now: float,
    next_check_due: float,
    heard_until: float,
    grace_s: float,
    resend_after_s: float,
) -> TicketDecision:
    """What a room's due durable check does for one of its live tickets.

    A silent ticket is expired; one whose expiry was asked for recently is left to the sequencer,
    and asked for again once ``resend_after_s`` has passed without the ticket ending. A ticket whose
    deadline comes before ``next_check_due`` gets an in-memory look at that deadline.
    """
    if is_silent(ticket.last_seen, timeout_s, now, heard_until, grace_s):
        recently_sent = ticket.expire_sent_at is not None and now - ticket.expire_sent_at < resend_after_s
        return NOTHING if recently_sent else TicketDecision(expire=True)
    look = max(first_look(ticket.last_seen, timeout_s, grace_s), now)
    return TicketDecision(look_at=look if look < next_check_due else None)


def decide_look(
    ticket: TicketClock,
    *,
    timeout_s: float,
    now: float,
    next_check_due: float,
    heard_until: float,
    grace_s: float,
    retry_s: float,
) -> TicketDecision:
    """What an in-memory final-approach look does: expire, look again, or leave it to the schedule."""
    if is_silent(ticket.last_seen, timeout_s, now, heard_until, grace_s):
        if ticket.expire_sent_at is not None:
            return NOTHING  # asked already; the durable check asks again if it is still live then
        return TicketDecision(expire=True)
    look = first_look(ticket.last_seen, timeout_s, grace_s)
    if look <= now:
        # Silent by our clock, but heartbeats up to the deadline are not all read yet: look again soon.
        look = now + retry_s
    if look >= next_check_due:
        return NOTHING  # the durable check comes first and arms the next look
    return TicketDecision(look_at=look)


def heartbeat_replay_start(now: float, max_timeout_s: float, margin_s: float) -> float:
    """Where recovery starts reading heartbeats: older ones cannot keep any ticket alive."""
    return now - max_timeout_s - margin_s
