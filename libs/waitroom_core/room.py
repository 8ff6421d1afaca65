"""The room state machine: ``decide(state, command, now) -> events`` and ``evolve(state, event)``.

The sequencer that owns a room runs ``decide`` on each command in log order and appends the events;
every reader (sequencer after a restart, the API's read model, tests) folds the same events with
``evolve``. ``decide`` never changes the state it is given. ``evolve`` changes it in place and
returns it: a room may hold a million tickets, and copying that per event would make the log
unreplayable in practice (see docs/adr/0002-room-state-in-place.md). The tickets are columns, a
few bytes each (:mod:`waitroom_core.tickets`, docs/adr/0008-columnar-room-state.md).

Invariant after every event batch: a room that is not paused has either no waiting tickets or no
free slot. So admission is always of the oldest live waiting tickets, in ``queue_no`` order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from waitroom_core.fenwick import Fenwick
from waitroom_core.tickets import ADMITTED, EXPIRED, LEFT, WAITING, Ticket, TicketState, TicketTable
from waitroom_events.commands import (
    AdmitRequested,
    Command,
    ExpireRequested,
    JoinRequested,
    LeaveRequested,
    RoomArchiveRequested,
    RoomConfigureRequested,
)
from waitroom_events.events import (
    JoinRejected,
    RoomArchived,
    RoomConfigured,
    RoomEvent,
    TicketAdmitted,
    TicketExpired,
    TicketIssued,
    TicketLeft,
)

DEFAULT_HEARTBEAT_TIMEOUT_S = 20.0
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
MAX_CAPACITY = 10_000_000
MAX_ADMIT_COUNT = 100_000
MAX_TIMEOUT_S = 3600.0
MIN_TIMEOUT_S = 1.0
#: below this a room asks every visitor for a request more often than twice a second
MIN_INTERVAL_S = 0.5


#: the room's branding of the waiting page: each key's longest value
BRANDING_KEYS = {
    "title": 80,
    "message": 500,
    "logo_url": 2048,
    "accent_color": 7,
    "background_color": 7,
    "text_color": 7,
}
BRANDING_COLOURS = ("accent_color", "background_color", "text_color")


class InvalidCommand(ValueError):
    """A command no room could accept (a negative capacity, say). The sequencer dead-letters it."""


@dataclass(frozen=True, slots=True)
class RoomConfig:
    capacity: int
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    target_url: str | None = None
    paused: bool = False
    #: the waiting page's branding as sorted (key, value) pairs: see BRANDING_KEYS
    branding: tuple[tuple[str, str], ...] = ()


class RoomState:
    """One room as the fold of its events. Mutated only by :func:`evolve`.

    ``keep_ended_s`` (``None``: keep every ticket) is how long, on the room's own clock (its newest
    event), a ticket that ended stays a full ticket of ``tickets``; after that ``evolve`` forgets
    it, and only :meth:`find` still knows it ended (a tombstone). Decisions do not depend on it.
    """

    __slots__ = (
        "room_id",
        "config",
        "last_queue_no",
        "tickets",
        "_waiting_index",
        "_fenwick_base",
        "active",
        "waiting",
        "_cursor",
        "last_event_at",
        "keep_ended_s",
        "_forget_at",
    )

    def __init__(self, room_id: str, keep_ended_s: float | None = None) -> None:
        self.room_id = room_id
        self.config: RoomConfig | None = None
        self.last_queue_no = 0
        self.tickets = TicketTable()
        # counts of live waiting tickets by queue number, index = queue_no - _fenwick_base
        self._waiting_index = Fenwick()
        self._fenwick_base = 0
        self.active = 0
        self.waiting = 0
        # Every ticket with queue_no <= _cursor is no longer waiting: admission scans from here.
        self._cursor = 0
        self.last_event_at: float | None = None
        self.keep_ended_s = keep_ended_s
        self._forget_at = -math.inf

    @property
    def exists(self) -> bool:
        return self.config is not None

    def position(self, ticket: Ticket) -> int:
        """Live waiting tickets ahead of this one; 0 once admitted. O(log n)."""
        if ticket.state is not TicketState.WAITING:
            return 0
        return self._waiting_index.prefix(ticket.queue_no - 1 - self._fenwick_base)

    def waiting_in_order(self) -> Iterator[Ticket]:
        """Live waiting tickets, oldest first."""
        return self.tickets.waiting_from(self._cursor + 1)

    def ticket_by_queue_no(self, queue_no: int) -> Ticket | None:
        """The kept ticket of ``queue_no`` (``None``: not issued, or forgotten)."""
        if 1 <= queue_no <= self.last_queue_no:
            return self.tickets.at(queue_no)
        return None

    def find(self, ticket_id: str) -> Ticket | None:
        """The ticket, kept or forgotten (then a tombstone's view: state and queue number, NaN
        times); ``None`` if this room never issued it."""
        return self.tickets.get(ticket_id) or self.tickets.forgotten(ticket_id)

    def knows(self, ticket_id: str) -> bool:
        """Whether this room issued ``ticket_id``, forgotten or not."""
        return ticket_id in self.tickets or self.tickets.forgotten(ticket_id) is not None


# --------------------------------------------------------------------------------------------
# decide


def decide(state: RoomState, command: Command, now: float) -> list[RoomEvent]:
    """The events ``command`` causes in ``state`` at time ``now``. Never mutates ``state``."""
    if command.room_id != state.room_id:
        raise InvalidCommand(f"command for room {command.room_id!r} given to room {state.room_id!r}")
    match command:
        case JoinRequested():
            return _decide_join(state, command, now)
        case LeaveRequested():
            return _decide_end(state, command.ticket_id, now, left=True)
        case ExpireRequested():
            return _decide_end(state, command.ticket_id, now, left=False, last_hb=command.last_heartbeat_at)
        case RoomConfigureRequested():
            return _decide_configure(state, command, now)
        case AdmitRequested():
            return _decide_admit(state, command, now)
        case RoomArchiveRequested():
            return _decide_archive(state, now)
    raise InvalidCommand(f"unknown command {type(command).__name__}")


def _decide_join(state: RoomState, command: JoinRequested, now: float) -> list[RoomEvent]:
    config = state.config
    if config is None:
        return [JoinRejected(room_id=state.room_id, ticket_id=command.ticket_id, at=now, reason="unknown_room")]
    if state.knows(command.ticket_id):
        return []  # a retried join: the ticket exists already (or ended and was forgotten)
    queue_no = state.last_queue_no + 1
    events: list[RoomEvent] = [
        TicketIssued(room_id=state.room_id, ticket_id=command.ticket_id, queue_no=queue_no, at=now)
    ]
    # By the invariant, a free slot in an unpaused room means nobody waits: the newcomer goes in.
    if not config.paused and state.active < config.capacity and state.waiting == 0:
        events.append(
            TicketAdmitted(room_id=state.room_id, ticket_id=command.ticket_id, queue_no=queue_no, at=now, issued_at=now)
        )
    return events


def _decide_end(
    state: RoomState, ticket_id: str, now: float, *, left: bool, last_hb: float | None = None
) -> list[RoomEvent]:
    ticket = state.tickets.get(ticket_id)
    if ticket is None or not ticket.state.live or state.config is None:
        return []  # unknown or already ended: leaving and expiring are idempotent
    was_admitted = ticket.state is TicketState.ADMITTED
    ended: RoomEvent
    if left:
        ended = TicketLeft(
            room_id=state.room_id, ticket_id=ticket_id, queue_no=ticket.queue_no, at=now, was_admitted=was_admitted
        )
    else:
        ended = TicketExpired(
            room_id=state.room_id,
            ticket_id=ticket_id,
            queue_no=ticket.queue_no,
            at=now,
            was_admitted=was_admitted,
            last_heartbeat_at=last_hb,
        )
    active_after = state.active - (1 if was_admitted else 0)
    return [ended, *_backfill(state, state.config, active_after, now, exclude=ticket_id)]


def _decide_configure(state: RoomState, command: RoomConfigureRequested, now: float) -> list[RoomEvent]:
    config = configured(state.config, command)
    if config == state.config:
        return []  # nothing changes: a repeated PUT leaves no trace in the log
    configured_event = RoomConfigured(
        room_id=state.room_id,
        at=now,
        capacity=config.capacity,
        heartbeat_timeout_s=config.heartbeat_timeout_s,
        heartbeat_interval_s=config.heartbeat_interval_s,
        target_url=config.target_url,
        paused=config.paused,
        branding=dict(config.branding) or None,
    )
    return [configured_event, *_backfill(state, config, state.active, now)]


def configured(current: RoomConfig | None, command: RoomConfigureRequested) -> RoomConfig:
    """The configuration ``command`` asks for on top of ``current`` (None: a new room), validated.

    The API calls this too, to answer 422 before publishing and to know when its change has landed.
    """
    if current is None:
        if command.capacity is None:
            raise InvalidCommand("a new room needs a capacity")
        current = RoomConfig(capacity=command.capacity)
    config = RoomConfig(
        capacity=current.capacity if command.capacity is None else command.capacity,
        heartbeat_timeout_s=_pick(command.heartbeat_timeout_s, current.heartbeat_timeout_s),
        heartbeat_interval_s=_pick(command.heartbeat_interval_s, current.heartbeat_interval_s),
        target_url=current.target_url if command.target_url is None else command.target_url,
        paused=current.paused if command.paused is None else command.paused,
        branding=current.branding if command.branding is None else _branding(command.branding),
    )
    validate_config(config)
    return config


def _branding(values: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((key, value) for key, value in values.items() if value))


def _pick(new: float | None, current: float) -> float:
    return current if new is None else float(new)


def validate_config(config: RoomConfig) -> None:
    """The one definition of a valid room configuration (the API checks it too, to answer 4xx)."""
    if not 0 <= config.capacity <= MAX_CAPACITY:
        raise InvalidCommand(f"capacity must be between 0 and {MAX_CAPACITY}")
    if not MIN_TIMEOUT_S <= config.heartbeat_timeout_s <= MAX_TIMEOUT_S:
        raise InvalidCommand(f"heartbeat_timeout_s must be between {MIN_TIMEOUT_S} and {MAX_TIMEOUT_S}")
    if not MIN_INTERVAL_S <= config.heartbeat_interval_s < config.heartbeat_timeout_s:
        raise InvalidCommand(f"heartbeat_interval_s must be at least {MIN_INTERVAL_S} and below heartbeat_timeout_s")
    if config.target_url is not None and not is_absolute_http_url(config.target_url):
        raise InvalidCommand("target_url must be an absolute http(s) URL with a host")
    validate_branding(dict(config.branding))


def validate_branding(branding: dict[str, str]) -> None:
    """Texts of bounded length, colours as ``#rrggbb`` (they go into the page's CSS), a logo as an
    absolute http(s) URL (the page's CSP allows images from its origin only)."""
    for key, value in branding.items():
        longest = BRANDING_KEYS.get(key)
        if longest is None:
            raise InvalidCommand(f"unknown branding setting {key!r}; known: {', '.join(BRANDING_KEYS)}")
        if not isinstance(value, str) or len(value) > longest:
            raise InvalidCommand(f"branding {key} must be text of at most {longest} characters")
        if key in BRANDING_COLOURS and not _is_colour(value):
            raise InvalidCommand(f"branding {key} must be a colour as #rrggbb")
        if key == "logo_url" and not is_absolute_http_url(value):
            raise InvalidCommand("branding logo_url must be an absolute http(s) URL with a host")


def _is_colour(value: str) -> bool:
    return len(value) == 7 and value[0] == "#" and all(c in "0123456789abcdefABCDEF" for c in value[1:])


def is_absolute_http_url(url: str) -> bool:
    """``http(s)://host[:port]/...`` that a browser can follow (``http://[`` is not)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # a port that is not a number is refused here
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(host) and not any(c.isspace() for c in url)


def _decide_admit(state: RoomState, command: AdmitRequested, now: float) -> list[RoomEvent]:
    if not 1 <= command.count <= MAX_ADMIT_COUNT:
        raise InvalidCommand(f"count must be between 1 and {MAX_ADMIT_COUNT}")
    config = state.config
    if config is None:
        return []
    if command.above_capacity:
        count = command.count
    else:
        count = min(command.count, max(0, config.capacity - state.active))
    return _admit_next(state, count, now, manual=True)


def _decide_archive(state: RoomState, now: float) -> list[RoomEvent]:
    if state.config is None or state.active or state.waiting:
        return []  # unknown, or someone still holds a ticket: the API answers 409 before asking
    return [RoomArchived(room_id=state.room_id, at=now, last_queue_no=state.last_queue_no)]


def _backfill(
    state: RoomState, config: RoomConfig, active_after: int, now: float, exclude: str | None = None
) -> list[RoomEvent]:
    if config.paused:
        return []
    return _admit_next(state, config.capacity - active_after, now, manual=False, exclude=exclude)


def _admit_next(
    state: RoomState, count: int, now: float, *, manual: bool, exclude: str | None = None
) -> list[RoomEvent]:
    events: list[RoomEvent] = []
    if count <= 0:
        return events
    for ticket in state.waiting_in_order():
        if ticket.ticket_id == exclude:
            continue
        events.append(
            TicketAdmitted(
                room_id=state.room_id,
                ticket_id=ticket.ticket_id,
                queue_no=ticket.queue_no,
                at=now,
                manual=manual,
                issued_at=ticket.issued_at,
            )
        )
        if len(events) == count:
            break
    return events


# --------------------------------------------------------------------------------------------
# evolve


def evolve(state: RoomState, event: RoomEvent) -> RoomState:
    """Apply one event to ``state`` (in place) and return it. Tolerates events it cannot place."""
    if event.room_id != state.room_id:
        return state
    match event:
        case RoomConfigured():
            state.config = RoomConfig(
                capacity=event.capacity,
                heartbeat_timeout_s=event.heartbeat_timeout_s,
                heartbeat_interval_s=event.heartbeat_interval_s,
                target_url=event.target_url,
                paused=event.paused,
                branding=_branding(event.branding or {}),
            )
        case TicketIssued():
            if event.queue_no != state.last_queue_no + 1:
                return state
            if not state.tickets.issue(event.ticket_id, event.queue_no, event.at):
                return state  # issued before (kept or forgotten)
            state.last_queue_no = event.queue_no
            state._waiting_index.add(event.queue_no - state._fenwick_base, 1)
            state.waiting += 1
        case TicketAdmitted():
            queue_no = state.tickets.queue_no_of(event.ticket_id)
            if queue_no is None or state.tickets.state_code(queue_no) != WAITING:
                return state
            _leave_waiting(state, queue_no)
            state.tickets.admit(queue_no, event.at)
            state.active += 1
        case TicketLeft() | TicketExpired():
            queue_no = state.tickets.queue_no_of(event.ticket_id)
            if queue_no is None:
                return state
            code = state.tickets.state_code(queue_no)
            if code == WAITING:
                _leave_waiting(state, queue_no)
            elif code == ADMITTED:
                state.active -= 1
            else:
                return state  # ended already
            state.tickets.end(queue_no, LEFT if isinstance(event, TicketLeft) else EXPIRED, event.at)
        case JoinRejected():
            pass
        case RoomArchived():
            RoomState.__init__(state, state.room_id, state.keep_ended_s)  # as if never created: readers drop it
            return state
    state.last_event_at = event.at
    _advance_cursor(state)
    if state.keep_ended_s is not None and event.at >= state._forget_at:
        forget_ended(state, event.at - state.keep_ended_s)
        state._forget_at = event.at + max(1.0, state.keep_ended_s / 8)
    return state


def _leave_waiting(state: RoomState, queue_no: int) -> None:
    state._waiting_index.add(queue_no - state._fenwick_base, -1)
    state.waiting -= 1


def _advance_cursor(state: RoomState) -> None:
    state._cursor = state.tickets.first_waiting(state._cursor + 1, state.last_queue_no) - 1


def forget_ended(state: RoomState, cutoff: float) -> int:
    """Forget the room's tickets that ended before ``cutoff`` (see :class:`RoomState`); how many.

    Only numbers at or below the admission cursor go, so no scan of the line needs them.
    """
    forgotten = state.tickets.forget_ended(cutoff, state._cursor)
    base = state.tickets.base
    if base - state._fenwick_base > max(1024, state.last_queue_no - base):
        # the tree's counts below the rows are all 0 (nothing waits there): start it at the rows
        state._waiting_index = Fenwick.from_counts(state.tickets.waiting_counts())
        state._fenwick_base = base
    return forgotten


def apply_all(state: RoomState, events: list[RoomEvent]) -> RoomState:
    for event in events:
        evolve(state, event)
    return state
