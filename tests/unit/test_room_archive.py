"""Archiving a room: a scenario history, the archive command, the events decided and what readers keep."""

from __future__ import annotations

from waitroom_core.room import RoomState, apply_all, decide, evolve
from waitroom_core.snapshot import decode_rooms, encode_rooms
from waitroom_events.commands import JoinRequested, RoomArchiveRequested, RoomConfigureRequested
from waitroom_events.events import RoomArchived, RoomConfigured, TicketAdmitted, TicketIssued, TicketLeft

ROOM = "old-sale"
NOW = 5_000.0


def configured() -> RoomConfigured:
    return RoomConfigured(
        room_id=ROOM,
        at=1.0,
        capacity=1,
        heartbeat_timeout_s=20.0,
        heartbeat_interval_s=5.0,
        target_url=None,
        paused=False,
    )


def issued(n: int) -> TicketIssued:
    return TicketIssued(room_id=ROOM, ticket_id=f"t{n}", queue_no=n, at=float(n))


def archive() -> RoomArchiveRequested:
    return RoomArchiveRequested(room_id=ROOM, requested_at=NOW)


def test_a_room_whose_tickets_all_ended_is_archived() -> None:
    room = apply_all(
        RoomState(ROOM),
        [
            configured(),
            issued(1),
            TicketAdmitted(room_id=ROOM, ticket_id="t1", queue_no=1, at=1.0),
            TicketLeft(room_id=ROOM, ticket_id="t1", queue_no=1, at=2.0, was_admitted=True),
        ],
    )

    assert decide(room, archive(), NOW) == [RoomArchived(room_id=ROOM, at=NOW, last_queue_no=1)]


def test_a_room_with_a_live_ticket_is_not_archived() -> None:
    room = apply_all(RoomState(ROOM), [configured(), issued(1)])

    assert decide(room, archive(), NOW) == []


def test_archiving_an_unknown_room_decides_nothing() -> None:
    assert decide(RoomState(ROOM), archive(), NOW) == []


def test_an_archived_room_is_forgotten_joins_are_rejected_and_it_is_in_no_snapshot() -> None:
    room = apply_all(RoomState(ROOM), [configured(), issued(1)])
    room = evolve(room, RoomArchived(room_id=ROOM, at=NOW, last_queue_no=1))

    assert not room.exists and room.tickets == {} and room.last_queue_no == 0
    [rejected] = decide(room, JoinRequested(room_id=ROOM, ticket_id="late", requested_at=NOW), NOW)
    assert type(rejected).__name__ == "JoinRejected"
    assert decode_rooms(encode_rooms([room])[0]) == {}


def test_a_room_configured_again_under_an_archived_id_is_new_and_numbered_from_1() -> None:
    room = apply_all(RoomState(ROOM), [configured(), issued(1), RoomArchived(room_id=ROOM, at=NOW, last_queue_no=1)])
    for event in decide(room, RoomConfigureRequested(room_id=ROOM, requested_at=NOW, capacity=0), NOW):
        evolve(room, event)

    [ticket] = decide(room, JoinRequested(room_id=ROOM, ticket_id="again", requested_at=NOW), NOW)
    assert isinstance(ticket, TicketIssued) and ticket.queue_no == 1
