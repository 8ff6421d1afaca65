"""How AWS VWR's counters and answers map onto a waitroom room: pure functions of the read model.

Everything here is a function of the room's state as folded from ``room-events`` (plus ``now``), so
every API replica answers the same and a restarted one answers as before. The mapping:

- a request (``request_id``) is a ticket whose id is a version-8 UUID; waitroom's own joins make
  version-4 ids, so any replica tells the facade's tickets from the others without shared state;
- ``queue_number`` = ``queue_no``; ``entry_time`` = when the ticket was issued;
- "served" = admitted. Admission is in ``queue_no`` order, so the admitted tickets are a prefix of
  the live ones and the serving counter is the number just below the oldest waiting ticket;
- the token set is fixed at admission: ``iat`` = ``nbf`` = the admission second, ``exp`` = that plus
  the validity period. So every replica signs the same claims (RS256 signatures are deterministic),
  and a regenerated set is the same set.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from enum import Enum

from waitroom_core.room import RoomState, Ticket, TicketState

#: AWS checks a client's request id against the shape of API Gateway's request ids (a match at the start)
REQUEST_ID_SHAPE = re.compile(r"\w{8}-\w{4}-\w{4}-\w{4}-\w{12}")
_VERSION_8 = 8


def new_request_id() -> str:
    """A random version-8 UUID (RFC 9562): 122 random bits, like AWS's request ids, and marked as the facade's."""
    value = int.from_bytes(secrets.token_bytes(16), "big")
    value &= ~(0xF << 76)
    value |= _VERSION_8 << 76
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # the RFC variant
    return str(uuid.UUID(int=value))


def is_facade_request(ticket_id: str) -> bool:
    try:
        parsed = uuid.UUID(ticket_id)
    except ValueError:
        return False
    return parsed.variant == uuid.RFC_4122 and (parsed.int >> 76) & 0xF == _VERSION_8


def looks_like_request_id(text: str) -> bool:
    return REQUEST_ID_SHAPE.match(text) is not None


def serving_num(room: RoomState) -> int:
    """AWS's serving counter: every queue number up to it has been served (admitted or ended since)."""
    oldest_waiting = next(room.waiting_in_order(), None)
    return room.last_queue_no if oldest_waiting is None else oldest_waiting.queue_no - 1


def facade_ticket(room: RoomState, request_id: str) -> Ticket | None:
    if not is_facade_request(request_id):
        return None
    return room.tickets.get(request_id)


@dataclass(frozen=True, slots=True)
class Periods:
    queue_position_expiry_s: int
    validity_s: int


def token_window(ticket: Ticket, periods: Periods) -> tuple[int, int] | None:
    """``(iat, exp)`` of the ticket's token set; None before admission."""
    if ticket.admitted_at is None:
        return None
    issued = int(ticket.admitted_at)
    return issued, issued + periods.validity_s


class TokenAnswer(Enum):
    NOT_SERVED = "not_served"  # 202 "Request ID not being served yet"
    TOKENS = "tokens"  # 200, the set
    POSITION_EXPIRED = "position_expired"  # 410 "Queue position has expired"
    SESSION_ENDED = "session_ended"  # 410 "Token corresponding to request id has expired"


def token_answer(
    ticket: Ticket, periods: Periods, *, claimed_here: bool = False, timeout_s: float = 20.0
) -> TokenAnswer:
    """What ``generate_token`` answers for the ticket.

    A session that ran out still gets its set back, with ``expires_in`` 0, as AWS returns a stored
    token whatever its age. An expired ticket had a claimed set if this replica handed it out, or
    if it lived longer than an unclaimed position can (kept past its lapse, the reaper's timeout and
    slack); otherwise it was a served position nobody claimed in time. ``update_session`` ends a
    session with a leave.
    """
    match ticket.state:
        case TicketState.WAITING:
            return TokenAnswer.NOT_SERVED
        case TicketState.ADMITTED:
            return TokenAnswer.TOKENS
        case TicketState.LEFT:
            return TokenAnswer.SESSION_ENDED if ticket.admitted_at is not None else TokenAnswer.POSITION_EXPIRED
    if ticket.admitted_at is None or ticket.ended_at is None:
        return TokenAnswer.POSITION_EXPIRED
    if claimed_here:
        return TokenAnswer.TOKENS
    lapse = ticket.admitted_at + min(periods.queue_position_expiry_s, periods.validity_s)
    if ticket.ended_at >= lapse + timeout_s + REAPER_SLACK_S:
        return TokenAnswer.TOKENS
    return TokenAnswer.POSITION_EXPIRED


def position_lapsed(ticket: Ticket, periods: Periods, now: float) -> bool:
    """AWS's rule, in whole seconds: a served position lapses once more than the period has passed
    since it was served (AWS counts from the later of entry and serving; a waitroom ticket is
    admitted after it is issued, so that is the admission)."""
    assert ticket.admitted_at is not None
    return int(now) - int(ticket.admitted_at) > periods.queue_position_expiry_s


def position_expires_in(ticket: Ticket, periods: Periods, now: float) -> int | None:
    """Seconds before a served position lapses (AWS's ``queue_pos_expiry``); None once it has."""
    assert ticket.admitted_at is not None
    if ticket.state is not TicketState.ADMITTED or position_lapsed(ticket, periods, now):
        return None
    return periods.queue_position_expiry_s - (int(now) - int(ticket.admitted_at))


#: how long past an unclaimed position's lapse the reaper surely has expired it (its checks run
#: every 10 s and it expires within the timeout plus a second): an admitted ticket still live later
#: than that is being kept by some replica, so its set was claimed there
REAPER_SLACK_S = 11.0


def claimed_elsewhere(ticket: Ticket, periods: Periods, now: float, timeout_s: float) -> bool:
    """Whether the ticket's survival proves that a replica (maybe this one before a restart) keeps it."""
    if ticket.state is not TicketState.ADMITTED or ticket.admitted_at is None:
        return False
    return now > ticket.admitted_at + periods.queue_position_expiry_s + timeout_s + REAPER_SLACK_S


def may_claim(ticket: Ticket, periods: Periods, now: float, *, claimed_here: bool, timeout_s: float) -> bool:
    """AWS hands a set out for the first time only within ``QueuePositionExpiryPeriod`` of serving;
    one already handed out is handed out again at any time."""
    if claimed_here or not position_lapsed(ticket, periods, now):
        return True
    return claimed_elsewhere(ticket, periods, now, timeout_s)


def keep_alive(
    ticket: Ticket, periods: Periods, now: float, *, claimed_until: float | None = None, timeout_s: float = 20.0
) -> bool:
    """Whether the facade heartbeats the ticket on its holder's behalf (AWS clients never do).

    - waiting: always; an AWS queue position never expires while it waits;
    - admitted, token set not claimed: for ``QueuePositionExpiryPeriod`` after admission;
    - admitted, claimed (``claimed_until`` = the set's ``exp``, or claimed on another replica, as
      its survival shows): until the set's ``exp``, unless ``update_session`` ended it first.
    A ticket no longer kept falls to the reaper after the room's heartbeat timeout, and its slot
    goes to the next in line.
    """
    if ticket.state is TicketState.WAITING:
        return True
    if ticket.state is not TicketState.ADMITTED or ticket.admitted_at is None:
        return False
    if claimed_until is None and claimed_elsewhere(ticket, periods, now, timeout_s):
        claimed_until = ticket.admitted_at + periods.validity_s
    if claimed_until is not None:
        return now < claimed_until
    return now < ticket.admitted_at + min(periods.queue_position_expiry_s, periods.validity_s)


def active_tokens(room: RoomState, periods: Periods, now: float) -> int:
    """AWS's ``num_active_tokens``: sessions not ended whose ``exp`` is still ahead."""
    count = 0
    for ticket in list(room.tickets.values()):
        window = token_window(ticket, periods)
        if ticket.state is TicketState.ADMITTED and window is not None and now <= window[1]:
            count += is_facade_request(ticket.ticket_id)
    return count


def expired_tokens(room: RoomState, periods: Periods, now: float) -> list[str]:
    """AWS's ``expired_tokens``: request ids whose token set's ``exp`` has passed, oldest first."""
    expired = []
    for ticket in list(room.tickets.values()):
        window = token_window(ticket, periods)
        if window is not None and window[1] < now and is_facade_request(ticket.ticket_id):
            expired.append((ticket.queue_no, ticket.ticket_id))
    return [ticket_id for _, ticket_id in sorted(expired)]
