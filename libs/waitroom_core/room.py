"""The room state machine: ``decide(state, command, now) -> events`` and ``evolve(state, event)``.

The sequencer that owns a room runs ``decide`` on each command in log order and appends the events;
every reader (sequencer after a restart, the API's read model, tests) folds the same events with
``evolve``. ``decide`` never changes the state it is given. ``evolve`` changes it in place and
returns it: a room may hold a million tickets, and copying that per event would make the log
unreplayable in practice (see docs/adr/0002-room-state-in-place.md).

Invariant after every event batch: a room that is not paused has either no waiting tickets or no
free slot. So admission is always of the oldest live waiting tickets, in ``queue_no`` order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from waitroom_core.fenwick import Fenwick
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


class TicketState(StrEnum):
    WAITING = "waiting"
    ADMITTED = "admitted"
    EXPIRED = "expired"
    LEFT = "left"

    @property
    def live(self) -> bool:
        return self in (TicketState.WAITING, TicketState.ADMITTED)


@dataclass(frozen=True, slots=True)
class RoomConfig:
    capacity: int
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    target_url: str | None = None
    paused: bool = False
    #: the waiting page's branding as sorted (key, value) pairs: see BRANDING_KEYS
    branding: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Ticket:
    ticket_id: str
    queue_no: int
    state: TicketState
    issued_at: float
    admitted_at: float | None = None
    ended_at: float | None = None


class RoomState:
    """One room as the fold of its events. Mutated only by :func:`evolve`."""

    __slots__ = (
        "room_id",
        "config",
        "last_queue_no",
        "tickets",
        "_by_queue",
        "_waiting_index",
        "active",
        "waiting",
        "_cursor",
        "last_event_at",
    )

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self.config: RoomConfig | None = None
        self.last_queue_no = 0
        self.tickets: dict[str, Ticket] = {}
        self._by_queue: list[str] = [""]  # index = queue_no; slot 0 unused
        self._waiting_index = Fenwick()
        self.active = 0
        self.waiting = 0
        # Every ticket with queue_no <= _cursor is no longer waiting: admission scans from here.
        self._cursor = 0
        self.last_event_at: float | None = None

    @property
    def exists(self) -> bool:
        return self.config is not None

    def position(self, ticket: Ticket) -> int:
        """Live waiting tickets ahead of this one; 0 once admitted. O(log n)."""
        if ticket.state is not TicketState.WAITING:
            return 0
        return self._waiting_index.prefix(ticket.queue_no - 1)

    def waiting_in_order(self) -> Iterator[Ticket]:
        """Live waiting tickets, oldest first."""
        tickets = self.tickets
        by_queue = self._by_queue
        for queue_no in range(self._cursor + 1, self.last_queue_no + 1):
            ticket = tickets[by_queue[queue_no]]
            if ticket.state is TicketState.WAITING:
                yield ticket

    def ticket_by_queue_no(self, queue_no: int) -> Ticket | None:
        if 1 <= queue_no <= self.last_queue_no:
            return self.tickets[self._by_queue[queue_no]]
        return None


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
    if command.ticket_id in state.tickets:
        return []  # a retried join: the ticket exists already
    queue_no = state.last_queue_no + 1
    events: list[RoomEvent] = [
        TicketIssued(room_id=state.room_id, ticket_id=command.ticket_id, queue_no=queue_no, at=now)
    ]
    # By the invariant, a free slot in an unpaused room means nobody waits: the newcomer goes in.
    if not config.paused and state.active < config.capacity and state.waiting == 0:
        events.append(TicketAdmitted(room_id=state.room_id, ticket_id=command.ticket_id, queue_no=queue_no, at=now))
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
                room_id=state.room_id, ticket_id=ticket.ticket_id, queue_no=ticket.queue_no, at=now, manual=manual
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
            if event.ticket_id in state.tickets or event.queue_no != state.last_queue_no + 1:
                return state
            state.last_queue_no = event.queue_no
            state.tickets[event.ticket_id] = Ticket(
                ticket_id=event.ticket_id, queue_no=event.queue_no, state=TicketState.WAITING, issued_at=event.at
            )
            state._by_queue.append(event.ticket_id)
            state._waiting_index.add(event.queue_no, 1)
            state.waiting += 1
        case TicketAdmitted():
            ticket = state.tickets.get(event.ticket_id)
            if ticket is None or ticket.state is not TicketState.WAITING:
                return state
            _leave_waiting(state, ticket)
            ticket.state = TicketState.ADMITTED
            ticket.admitted_at = event.at
            state.active += 1
        case TicketLeft() | TicketExpired():
            ticket = state.tickets.get(event.ticket_id)
            if ticket is None or not ticket.state.live:
                return state
            if ticket.state is TicketState.WAITING:
                _leave_waiting(state, ticket)
            else:
                state.active -= 1
            ticket.state = TicketState.LEFT if isinstance(event, TicketLeft) else TicketState.EXPIRED
            ticket.ended_at = event.at
        case JoinRejected():
            pass
        case RoomArchived():
            RoomState.__init__(state, state.room_id)  # as if never created: every reader drops it
            return state
    state.last_event_at = event.at
    _advance_cursor(state)
    return state


def _leave_waiting(state: RoomState, ticket: Ticket) -> None:
    state._waiting_index.add(ticket.queue_no, -1)
    state.waiting -= 1


def _advance_cursor(state: RoomState) -> None:
    tickets = state.tickets
    by_queue = state._by_queue
    cursor = state._cursor
    last = state.last_queue_no
    while cursor < last and tickets[by_queue[cursor + 1]].state is not TicketState.WAITING:
        cursor += 1
    state._cursor = cursor


def apply_all(state: RoomState, events: list[RoomEvent]) -> RoomState:
    for event in events:
        evolve(state, event)
    return state
