"""Rooms that forget ended tickets (``keep_ended_s``) decide exactly as rooms that keep them all.

Random command sequences go through two rooms in lockstep: one keeps every ticket, the other
forgets a ticket ``keep`` seconds after it ended (a tombstone stays). Ids are a mix of canonical
UUID strings (stored as 16 raw bytes) and other text (stored as text), and joins repeat ids of
live, ended and forgotten tickets (an Idempotency-Key retry). Snapshots of the forgetting room
round-trip too.
"""

from __future__ import annotations

import math
import random
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from waitroom_core.room import RoomState, TicketState, decide, evolve, forget_ended
from waitroom_core.snapshot import decode_rooms, encode_rooms
from waitroom_events.commands import (
    AdmitRequested,
    Command,
    ExpireRequested,
    JoinRequested,
    LeaveRequested,
    RoomConfigureRequested,
)
from waitroom_events.events import TicketIssued

ROOM = "r"


def _id(n: int, odd: bool) -> str:
    return f"t{n}" if odd else str(uuid.UUID(int=(n * 0x9E3779B97F4A7C15) % (1 << 128)))


commands = st.lists(
    st.tuples(
        st.sampled_from(["join", "join", "join", "rejoin", "leave", "expire", "capacity", "admit"]),
        st.integers(0, 10_000),
        st.booleans(),
        st.floats(0.0, 3.0),
    ),
    min_size=1,
    max_size=120,
)


def _command(kind: str, pick: int, odd: bool, issued: list[str], fresh: int) -> Command | None:
    if kind == "join":
        return JoinRequested(room_id=ROOM, ticket_id=_id(fresh, odd), requested_at=0.0)
    if kind == "capacity":
        return RoomConfigureRequested(room_id=ROOM, requested_at=0.0, capacity=pick % 5)
    if kind == "admit":
        return AdmitRequested(room_id=ROOM, requested_at=0.0, count=1 + pick % 3, above_capacity=pick % 2 == 0)
    if not issued:
        return None
    ticket_id = issued[pick % len(issued)]
    if kind == "rejoin":
        return JoinRequested(room_id=ROOM, ticket_id=ticket_id, requested_at=0.0)
    if kind == "leave":
        return LeaveRequested(room_id=ROOM, ticket_id=ticket_id, requested_at=0.0)
    return ExpireRequested(room_id=ROOM, ticket_id=ticket_id, requested_at=0.0, last_heartbeat_at=None)


def _check(full: RoomState, lean: RoomState, issued: list[str], now: float, keep: float) -> None:
    assert (lean.active, lean.waiting, lean.last_queue_no, lean._cursor) == (
        full.active,
        full.waiting,
        full.last_queue_no,
        full._cursor,
    )
    assert list(lean.waiting_in_order()) == list(full.waiting_in_order())
    for ticket_id in issued:
        whole = full.tickets[ticket_id]
        kept = lean.tickets.get(ticket_id)
        found = lean.find(ticket_id)
        assert found is not None and lean.knows(ticket_id)
        assert (found.ticket_id, found.queue_no, found.state) == (ticket_id, whole.queue_no, whole.state)
        assert lean.position(found) == full.position(whole)
        if kept is None:
            assert whole.ended_at is not None and whole.ended_at < now - keep, "forgotten before its time"
            assert math.isnan(found.issued_at)
            assert lean.ticket_by_queue_no(whole.queue_no) is None
        else:
            assert kept == whole
            assert lean.ticket_by_queue_no(whole.queue_no) == whole
    assert dict(lean.tickets.items()) == {t.ticket_id: t for t in full.tickets.values() if t.ticket_id in lean.tickets}
    assert len(lean.tickets) == len(list(lean.tickets)) == len(list(lean.tickets.values()))


@settings(max_examples=250, deadline=None)
@given(steps=commands, keep=st.sampled_from([0.0, 1.0, 4.0]), capacity=st.integers(0, 3))
def test_a_room_that_forgets_ended_tickets_decides_as_one_that_keeps_them(
    steps: list[tuple[str, int, bool, float]], keep: float, capacity: int
) -> None:
    full, lean = RoomState(ROOM), RoomState(ROOM, keep_ended_s=keep)
    issued: list[str] = []
    now = 0.0
    for room in (full, lean):
        for event in decide(room, RoomConfigureRequested(room_id=ROOM, requested_at=0.0, capacity=capacity), now):
            evolve(room, event)
    for fresh, (kind, pick, odd, pause) in enumerate(steps):
        now += pause
        command = _command(kind, pick, odd, issued, fresh)
        if command is None:
            continue
        events = decide(full, command, now)
        assert decide(lean, command, now) == events
        for event in events:
            evolve(full, event)
            evolve(lean, event)
            if isinstance(event, TicketIssued):
                issued.append(event.ticket_id)
        _check(full, lean, issued, now, keep)

    # a snapshot of the forgetting room holds what it kept, and folds back the same
    body, _ = encode_rooms([lean])
    restored = decode_rooms(body)[ROOM]
    assert dict(restored.tickets.items()) == dict(lean.tickets.items())
    assert list(restored.waiting_in_order()) == list(lean.waiting_in_order())
    assert [restored.position(t) for t in restored.tickets.values()] == [
        lean.position(t) for t in lean.tickets.values()
    ]


def test_forgetting_keeps_admitted_tickets_and_frees_the_rows_of_the_ended_ones() -> None:
    room = RoomState(ROOM)
    for event in decide(room, RoomConfigureRequested(room_id=ROOM, requested_at=0.0, capacity=10), 0.0):
        evolve(room, event)
    ids = [_id(n, odd=n % 50 == 0) for n in range(1, 2001)]
    for n, ticket_id in enumerate(ids):
        for event in decide(room, JoinRequested(room_id=ROOM, ticket_id=ticket_id, requested_at=0.0), float(n)):
            evolve(room, event)
        if n >= 5:  # all but the first five leave again, and let the next one in
            for event in decide(room, LeaveRequested(room_id=ROOM, ticket_id=ticket_id, requested_at=0.0), n + 0.5):
                evolve(room, event)

    assert forget_ended(room, 1_500.0) > 1_000
    assert room.tickets.base > 1_400 and len(room.tickets._states) < 600, "the rows of forgotten tickets are freed"
    for ticket_id in ids[:5]:
        ticket = room.tickets[ticket_id]
        assert ticket.state is TicketState.ADMITTED
    assert room.find(ids[100]) is not None and room.find(ids[100]).state is TicketState.LEFT  # type: ignore[union-attr]
    assert room.find(ids[50]) is not None and room.find(ids[50]).state is TicketState.LEFT  # type: ignore[union-attr]
    assert room.find("never-issued") is None
    # a retried join of a forgotten ticket makes no second ticket
    assert decide(room, JoinRequested(room_id=ROOM, ticket_id=ids[100], requested_at=0.0), 3_000.0) == []
    assert decide(room, LeaveRequested(room_id=ROOM, ticket_id=ids[100], requested_at=0.0), 3_000.0) == []


def test_in_a_steady_flow_only_the_admitted_tickets_older_than_a_forgotten_one_leave_the_columns() -> None:
    room = RoomState(ROOM, keep_ended_s=5.0)
    for event in decide(room, RoomConfigureRequested(room_id=ROOM, requested_at=0.0, capacity=100), 0.0):
        evolve(room, event)
    ids = [_id(n, odd=False) for n in range(1, 20_001)]
    for n, ticket_id in enumerate(ids):  # one join per 10 ms; each visitor stays one second
        now = n / 100
        for event in decide(room, JoinRequested(room_id=ROOM, ticket_id=ticket_id, requested_at=0.0), now):
            evolve(room, event)
        if n >= 100:
            for event in decide(room, LeaveRequested(room_id=ROOM, ticket_id=ids[n - 100], requested_at=0.0), now):
                evolve(room, event)

    assert room.active == 100 and room.tickets.forgotten_count > 19_000
    assert len(room.tickets._held) == 0, "the admitted tail stays in the columns"
    assert len(room.tickets) <= 100 + 5 * 100 + 200  # live + ended within 5 s + one sweep's slack


def test_the_tombstone_index_grows_without_a_pause_and_finds_every_row_while_it_moves() -> None:
    """Insert-only, grown a few slots per insert: every tombstone is found at every moment of a
    growth, an id never buried is not, and no single insert pays for the whole table."""
    from waitroom_core.tickets import _Tombstones, id_hash

    rng = random.Random(5)
    ids = [rng.randbytes(16) for _ in range(60_000)]
    index = _Tombstones(lambda row: id_hash(ids[row - 1]))
    growing = 0  # inserts made while a growth was under way: the move is spread over them
    grew_while_checking = False
    for row, raw in enumerate(ids, start=1):
        index.insert(id_hash(raw), row)
        growing += index.old is not None
        if index.old is not None and row % 97 == 0:
            grew_while_checking = True
            for earlier in (1, row // 2, row):  # old and new rows, mid-growth
                assert index.find(id_hash(ids[earlier - 1]), lambda r, e=earlier: r == e) == earlier
    assert grew_while_checking
    for row, raw in enumerate(ids, start=1):
        assert index.find(id_hash(raw), lambda r, want=raw: ids[r - 1] == want) == row
    stranger = rng.randbytes(16)
    assert index.find(id_hash(stranger), lambda r: ids[r - 1] == stranger) == 0
    assert growing > 10_000, "the table was rebuilt at once, not a few slots per insert"
