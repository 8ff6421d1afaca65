"""Scenarios of the room state machine: a history of events, one command, the exact events decided."""

from __future__ import annotations

from typing import Any

import pytest

from waitroom_core.room import InvalidCommand, RoomState, TicketState, apply_all, decide, evolve
from waitroom_events.commands import (
    AdmitRequested,
    ExpireRequested,
    JoinRequested,
    LeaveRequested,
    RoomConfigureRequested,
)
from waitroom_events.events import (
    JoinRejected,
    RoomConfigured,
    RoomEvent,
    TicketAdmitted,
    TicketExpired,
    TicketIssued,
    TicketLeft,
)

ROOM = "concert"
NOW = 1_000.0


def given(*history: RoomEvent) -> RoomState:
    return apply_all(RoomState(ROOM), list(history))


def configured(capacity: int, *, paused: bool = False, at: float = 1.0) -> RoomConfigured:
    return RoomConfigured(
        room_id=ROOM,
        at=at,
        capacity=capacity,
        heartbeat_timeout_s=20.0,
        heartbeat_interval_s=5.0,
        target_url=None,
        paused=paused,
    )


def issued(queue_no: int) -> TicketIssued:
    return TicketIssued(room_id=ROOM, ticket_id=f"t{queue_no}", queue_no=queue_no, at=float(queue_no))


def admitted(queue_no: int) -> TicketAdmitted:
    return TicketAdmitted(room_id=ROOM, ticket_id=f"t{queue_no}", queue_no=queue_no, at=float(queue_no))


def join(ticket_id: str) -> JoinRequested:
    return JoinRequested(room_id=ROOM, ticket_id=ticket_id, requested_at=NOW)


def leave(ticket_id: str) -> LeaveRequested:
    return LeaveRequested(room_id=ROOM, ticket_id=ticket_id, requested_at=NOW)


def expire(ticket_id: str, last_heartbeat_at: float | None = None) -> ExpireRequested:
    return ExpireRequested(room_id=ROOM, ticket_id=ticket_id, requested_at=NOW, last_heartbeat_at=last_heartbeat_at)


def configure(**settings: Any) -> RoomConfigureRequested:
    return RoomConfigureRequested(room_id=ROOM, requested_at=NOW, **settings)


def admit(count: int, *, above_capacity: bool = False) -> AdmitRequested:
    return AdmitRequested(room_id=ROOM, requested_at=NOW, count=count, above_capacity=above_capacity)


def full_room_with_queue() -> RoomState:
    """Capacity 2: t1 and t2 admitted, t3, t4 and t5 waiting."""
    return given(
        configured(2),
        issued(1),
        admitted(1),
        issued(2),
        admitted(2),
        issued(3),
        issued(4),
        issued(5),
    )


# --------------------------------------------------------------------------------------------
# joining


def test_a_join_to_an_unknown_room_is_rejected() -> None:
    state = given()

    assert decide(state, join("t1"), NOW) == [
        JoinRejected(room_id=ROOM, ticket_id="t1", at=NOW, reason="unknown_room"),
    ]


def test_a_join_to_a_room_with_a_free_slot_issues_the_next_number_and_admits_it_at_once() -> None:
    state = given(configured(2), issued(1), admitted(1))

    assert decide(state, join("t2"), NOW) == [
        TicketIssued(room_id=ROOM, ticket_id="t2", queue_no=2, at=NOW),
        TicketAdmitted(room_id=ROOM, ticket_id="t2", queue_no=2, at=NOW, issued_at=NOW),
    ]


def test_a_join_to_a_full_room_issues_a_waiting_ticket() -> None:
    state = full_room_with_queue()

    assert decide(state, join("t6"), NOW) == [TicketIssued(room_id=ROOM, ticket_id="t6", queue_no=6, at=NOW)]


def test_a_join_to_a_paused_room_with_free_slots_waits() -> None:
    state = given(configured(5, paused=True))

    assert decide(state, join("t1"), NOW) == [TicketIssued(room_id=ROOM, ticket_id="t1", queue_no=1, at=NOW)]


def test_a_repeated_join_with_the_same_ticket_id_issues_nothing() -> None:
    state = full_room_with_queue()

    assert decide(state, join("t4"), NOW) == []


def test_a_join_reusing_the_id_of_an_ended_ticket_issues_nothing() -> None:
    state = given(
        configured(1),
        issued(1),
        admitted(1),
        TicketLeft(room_id=ROOM, ticket_id="t1", queue_no=1, at=2.0, was_admitted=True),
    )

    assert decide(state, join("t1"), NOW) == []


def test_queue_numbers_are_never_reused_after_tickets_end() -> None:
    state = given(
        configured(0),
        issued(1),
        issued(2),
        TicketExpired(room_id=ROOM, ticket_id="t2", queue_no=2, at=3.0, was_admitted=False),
    )

    assert decide(state, join("t3"), NOW) == [TicketIssued(room_id=ROOM, ticket_id="t3", queue_no=3, at=NOW)]


# --------------------------------------------------------------------------------------------
# leaving and expiring


def test_a_leave_of_an_admitted_ticket_admits_the_oldest_waiting_one() -> None:
    state = full_room_with_queue()

    assert decide(state, leave("t1"), NOW) == [
        TicketLeft(room_id=ROOM, ticket_id="t1", queue_no=1, at=NOW, was_admitted=True),
        TicketAdmitted(room_id=ROOM, ticket_id="t3", queue_no=3, at=NOW, issued_at=float(3)),
    ]


def test_an_expiry_of_an_admitted_ticket_admits_the_oldest_live_waiting_one_skipping_ended_ones() -> None:
    state = full_room_with_queue()
    evolve(state, TicketLeft(room_id=ROOM, ticket_id="t3", queue_no=3, at=6.0, was_admitted=False))

    assert decide(state, expire("t2", last_heartbeat_at=7.5), NOW) == [
        TicketExpired(room_id=ROOM, ticket_id="t2", queue_no=2, at=NOW, was_admitted=True, last_heartbeat_at=7.5),
        TicketAdmitted(room_id=ROOM, ticket_id="t4", queue_no=4, at=NOW, issued_at=float(4)),
    ]


def test_a_leave_of_a_waiting_ticket_admits_nobody() -> None:
    state = full_room_with_queue()

    assert decide(state, leave("t4"), NOW) == [
        TicketLeft(room_id=ROOM, ticket_id="t4", queue_no=4, at=NOW, was_admitted=False),
    ]


def test_a_leave_of_an_admitted_ticket_in_a_paused_room_admits_nobody() -> None:
    state = full_room_with_queue()
    evolve(state, configured(2, paused=True, at=6.0))

    assert decide(state, leave("t1"), NOW) == [
        TicketLeft(room_id=ROOM, ticket_id="t1", queue_no=1, at=NOW, was_admitted=True),
    ]


def test_a_leave_while_above_capacity_admits_nobody_until_the_room_is_below_capacity() -> None:
    state = full_room_with_queue()
    evolve(state, configured(1, at=6.0))

    assert decide(state, leave("t1"), NOW) == [
        TicketLeft(room_id=ROOM, ticket_id="t1", queue_no=1, at=NOW, was_admitted=True),
    ]


@pytest.mark.parametrize("command", [leave("t1"), expire("t1"), leave("ghost"), expire("ghost")])
def test_leaving_or_expiring_an_ended_or_unknown_ticket_emits_nothing(
    command: LeaveRequested | ExpireRequested,
) -> None:
    state = given(
        configured(1),
        issued(1),
        admitted(1),
        TicketLeft(room_id=ROOM, ticket_id="t1", queue_no=1, at=2.0, was_admitted=True),
    )

    assert decide(state, command, NOW) == []


def test_expiring_a_waiting_ticket_lowers_the_positions_behind_it() -> None:
    state = full_room_with_queue()
    events = decide(state, expire("t3"), NOW)

    assert events == [TicketExpired(room_id=ROOM, ticket_id="t3", queue_no=3, at=NOW, was_admitted=False)]
    assert [state.position(state.tickets[t]) for t in ("t4", "t5")] == [1, 2]
    apply_all(state, events)
    assert [state.position(state.tickets[t]) for t in ("t4", "t5")] == [0, 1]
    assert state.position(state.tickets["t3"]) == 0
    assert state.tickets["t3"].state is TicketState.EXPIRED


# --------------------------------------------------------------------------------------------
# configuring


def test_configuring_a_new_room_creates_it_with_default_heartbeat_settings() -> None:
    state = given()

    assert decide(state, configure(capacity=3), NOW) == [
        RoomConfigured(
            room_id=ROOM,
            at=NOW,
            capacity=3,
            heartbeat_timeout_s=20.0,
            heartbeat_interval_s=5.0,
            target_url=None,
            paused=False,
        )
    ]


def test_configure_with_the_same_values_emits_nothing() -> None:
    state = given(configured(2))

    assert decide(state, configure(capacity=2, heartbeat_timeout_s=20, heartbeat_interval_s=5, paused=False), NOW) == []


def test_configure_without_settings_emits_nothing() -> None:
    state = given(configured(2))

    assert decide(state, configure(), NOW) == []


def test_configure_changes_only_the_settings_it_names() -> None:
    state = given(
        RoomConfigured(
            room_id=ROOM,
            at=1.0,
            capacity=2,
            heartbeat_timeout_s=30.0,
            heartbeat_interval_s=10.0,
            target_url="https://shop.example/",
            paused=False,
        )
    )

    assert decide(state, configure(heartbeat_interval_s=3), NOW) == [
        RoomConfigured(
            room_id=ROOM,
            at=NOW,
            capacity=2,
            heartbeat_timeout_s=30.0,
            heartbeat_interval_s=3.0,
            target_url="https://shop.example/",
            paused=False,
        )
    ]


def test_capacity_increase_admits_as_many_as_fit_in_queue_order() -> None:
    state = full_room_with_queue()

    assert decide(state, configure(capacity=4), NOW) == [
        configured(4, at=NOW),
        TicketAdmitted(room_id=ROOM, ticket_id="t3", queue_no=3, at=NOW, issued_at=float(3)),
        TicketAdmitted(room_id=ROOM, ticket_id="t4", queue_no=4, at=NOW, issued_at=float(4)),
    ]


def test_capacity_increase_beyond_the_queue_admits_everyone_waiting() -> None:
    state = full_room_with_queue()

    assert decide(state, configure(capacity=10), NOW) == [
        configured(10, at=NOW),
        TicketAdmitted(room_id=ROOM, ticket_id="t3", queue_no=3, at=NOW, issued_at=float(3)),
        TicketAdmitted(room_id=ROOM, ticket_id="t4", queue_no=4, at=NOW, issued_at=float(4)),
        TicketAdmitted(room_id=ROOM, ticket_id="t5", queue_no=5, at=NOW, issued_at=float(5)),
    ]


def test_capacity_decrease_admits_nobody_and_ends_nobody() -> None:
    state = full_room_with_queue()

    assert decide(state, configure(capacity=1), NOW) == [configured(1, at=NOW)]


def test_pausing_stops_admissions_and_resuming_fills_free_slots() -> None:
    state = full_room_with_queue()

    pausing = decide(state, configure(paused=True), NOW)
    assert pausing == [configured(2, paused=True, at=NOW)]
    apply_all(state, pausing)

    leaving = decide(state, leave("t1"), NOW + 1)
    assert leaving == [TicketLeft(room_id=ROOM, ticket_id="t1", queue_no=1, at=NOW + 1, was_admitted=True)]
    apply_all(state, leaving)
    assert decide(state, join("t6"), NOW + 2) == [TicketIssued(room_id=ROOM, ticket_id="t6", queue_no=6, at=NOW + 2)]

    assert decide(state, configure(paused=False), NOW + 3) == [
        configured(2, paused=False, at=NOW + 3),
        TicketAdmitted(room_id=ROOM, ticket_id="t3", queue_no=3, at=NOW + 3, issued_at=float(3)),
    ]


# --------------------------------------------------------------------------------------------
# manual admission


def test_manual_admit_within_capacity_admits_only_up_to_the_free_slots() -> None:
    state = full_room_with_queue()
    evolve(state, configured(3, paused=True, at=6.0))

    assert decide(state, admit(3), NOW) == [
        TicketAdmitted(room_id=ROOM, ticket_id="t3", queue_no=3, at=NOW, manual=True, issued_at=float(3)),
    ]


def test_manual_admit_in_a_full_room_admits_nobody_unless_above_capacity_is_asked() -> None:
    state = full_room_with_queue()

    assert decide(state, admit(2), NOW) == []


def test_manual_admit_above_capacity_exceeds_capacity_only_when_asked() -> None:
    state = full_room_with_queue()

    events = decide(state, admit(2, above_capacity=True), NOW)

    assert events == [
        TicketAdmitted(room_id=ROOM, ticket_id="t3", queue_no=3, at=NOW, manual=True, issued_at=float(3)),
        TicketAdmitted(room_id=ROOM, ticket_id="t4", queue_no=4, at=NOW, manual=True, issued_at=float(4)),
    ]
    apply_all(state, events)
    assert (state.active, state.waiting) == (4, 1)


def test_manual_admit_of_more_than_are_waiting_admits_everyone_waiting() -> None:
    state = full_room_with_queue()

    assert decide(state, admit(50, above_capacity=True), NOW) == [
        TicketAdmitted(room_id=ROOM, ticket_id=f"t{n}", queue_no=n, at=NOW, manual=True, issued_at=float(n))
        for n in (3, 4, 5)
    ]


def test_manual_admit_in_an_unknown_room_emits_nothing() -> None:
    assert decide(given(), admit(1, above_capacity=True), NOW) == []


# --------------------------------------------------------------------------------------------
# invalid commands


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(configure(capacity=-1), id="negative capacity"),
        pytest.param(configure(heartbeat_interval_s=20), id="interval equal to timeout"),
        pytest.param(configure(heartbeat_interval_s=25), id="interval above timeout"),
        pytest.param(configure(heartbeat_timeout_s=4), id="timeout below the current interval"),
        pytest.param(configure(heartbeat_interval_s=0), id="interval zero"),
        pytest.param(configure(heartbeat_interval_s=5e-324), id="interval of a denormal"),
        pytest.param(configure(heartbeat_interval_s=0.4), id="interval below half a second"),
        pytest.param(configure(target_url="http://["), id="target url unparsable"),
        pytest.param(configure(target_url="https://"), id="target url without a host"),
        pytest.param(configure(target_url="ftp://files.example/"), id="target url not http"),
        pytest.param(configure(target_url="https://shop.example:port/"), id="target url with a bad port"),
        pytest.param(configure(heartbeat_timeout_s=0.5, heartbeat_interval_s=0.1), id="timeout below a second"),
        pytest.param(configure(heartbeat_timeout_s=7200), id="timeout above an hour"),
        pytest.param(configure(heartbeat_timeout_s=float("nan")), id="timeout nan"),
        pytest.param(configure(capacity=10_000_001), id="capacity above the maximum"),
        pytest.param(admit(0), id="admit count 0"),
        pytest.param(admit(-3, above_capacity=True), id="admit count negative"),
        pytest.param(admit(100_001, above_capacity=True), id="admit count above the maximum"),
    ],
)
def test_an_invalid_command_raises_invalid_command(command: RoomConfigureRequested | AdmitRequested) -> None:
    state = full_room_with_queue()

    with pytest.raises(InvalidCommand):
        decide(state, command, NOW)


def test_a_new_room_without_capacity_raises_invalid_command() -> None:
    with pytest.raises(InvalidCommand):
        decide(given(), configure(paused=True), NOW)


def test_a_command_for_another_room_raises_invalid_command() -> None:
    state = full_room_with_queue()

    with pytest.raises(InvalidCommand):
        decide(state, JoinRequested(room_id="other", ticket_id="t9", requested_at=NOW), NOW)


# --------------------------------------------------------------------------------------------
# evolve tolerance


def test_an_event_for_another_room_leaves_the_state_unchanged() -> None:
    state = full_room_with_queue()

    evolve(state, TicketIssued(room_id="other", ticket_id="x", queue_no=6, at=9.0))

    assert (state.last_queue_no, state.waiting, "x" in state.tickets) == (5, 3, False)


def test_an_issued_event_out_of_sequence_is_ignored() -> None:
    state = full_room_with_queue()

    evolve(state, TicketIssued(room_id=ROOM, ticket_id="late", queue_no=9, at=9.0))
    evolve(state, TicketIssued(room_id=ROOM, ticket_id="t1", queue_no=6, at=9.0))

    assert (state.last_queue_no, state.waiting, "late" in state.tickets) == (5, 3, False)
