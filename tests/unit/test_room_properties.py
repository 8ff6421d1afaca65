"""Properties of the room state machine over random command sequences.

A hypothesis state machine sends joins (fresh and repeated ticket ids), leaves and expiries (of live,
ended and unknown tickets), configurations (capacity 0..6, pause toggles) and manual admits through
``decide`` and folds the decided events with ``evolve``, as the sequencer does. Each event is checked
against the state it lands on, and the whole room against brute-force counts after every step.
"""

from __future__ import annotations

import copy
from array import array
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from waitroom_core.room import InvalidCommand, RoomState, Ticket, TicketState, apply_all, decide, evolve
from waitroom_events.commands import (
    AdmitRequested,
    Command,
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

ROOM = "sale"
UNKNOWN_TICKET = "nobody"


def snapshot(state: RoomState) -> dict[str, Any]:
    """Everything a RoomState holds, private fields included, copied deep enough to compare later."""
    return _taken(state)


def _taken(value: Any) -> Any:
    # objects with slots (the room, its ticket table and index, the Fenwick tree): slot by slot
    slots = [name for cls in type(value).__mro__ for name in getattr(cls, "__slots__", ())]
    if slots and not isinstance(value, Ticket):
        return {name: _taken(getattr(value, name)) for name in slots if hasattr(value, name)}
    if isinstance(value, dict):
        return {key: copy.copy(item) for key, item in value.items()}  # Ticket is mutable, its fields are not
    if isinstance(value, array):
        return value.typecode, value.tobytes()  # by bytes: NaN (no time) is not equal to itself
    if isinstance(value, bytearray | list):
        return copy.copy(value)
    return value


class RoomMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = RoomState(ROOM)
        self.log: list[RoomEvent] = []
        self.issued_ids: list[str] = []
        self.fresh = 0
        self.now = 0.0

    # ----------------------------------------------------------------------------------------
    # the sequencer loop, with the checks that need the state an event lands on

    def run(self, command: Command) -> list[RoomEvent]:
        self.now += 1.0
        state = self.state
        before = snapshot(state)
        active_before = state.active

        events = decide(state, command, self.now)

        assert snapshot(state) == before, "decide mutated the state"
        for event in events:
            self.check_event_fits(event, command)
            evolve(state, event)
            self.log.append(event)
            if isinstance(event, TicketIssued):
                self.issued_ids.append(event.ticket_id)

        manual_above_capacity = isinstance(command, AdmitRequested) and command.above_capacity
        if state.config is not None and not manual_above_capacity:
            assert state.active <= max(state.config.capacity, active_before), (
                "only a manual admit above capacity may take the room over capacity"
            )
        return events

    def check_event_fits(self, event: RoomEvent, command: Command) -> None:
        state = self.state
        match event:
            case TicketIssued():
                assert event.ticket_id not in state.tickets
                assert event.queue_no == state.last_queue_no + 1
            case TicketAdmitted():
                ticket = state.tickets[event.ticket_id]
                assert ticket.state is TicketState.WAITING
                assert ticket.queue_no == event.queue_no
                assert not any(
                    t.state is TicketState.WAITING and t.queue_no < ticket.queue_no for t in state.tickets.values()
                ), "a ticket was admitted ahead of an older waiting one"
                config = state.config
                assert config is not None
                assert event.manual == isinstance(command, AdmitRequested)
                if not event.manual:
                    assert not config.paused
                    assert state.active < config.capacity, "automatic admission into a full room"
                elif isinstance(command, AdmitRequested) and not command.above_capacity:
                    assert state.active < config.capacity, "manual admission within capacity overfilled the room"
            case TicketLeft() | TicketExpired():
                ticket = state.tickets[event.ticket_id]
                assert ticket.state.live
                assert ticket.queue_no == event.queue_no
                assert event.was_admitted == (ticket.state is TicketState.ADMITTED)
            case RoomConfigured():
                assert isinstance(command, RoomConfigureRequested)
            case JoinRejected():
                assert not state.exists

    # ----------------------------------------------------------------------------------------
    # commands

    @initialize(create=st.booleans(), capacity=st.integers(0, 6))
    def maybe_create_room(self, create: bool, capacity: int) -> None:
        # Some runs start with no room, so joins to an unknown room are exercised too.
        if create:
            self.run(RoomConfigureRequested(room_id=ROOM, requested_at=self.now, capacity=capacity))

    @rule()
    def join_with_a_fresh_ticket_id(self) -> None:
        self.fresh += 1
        ticket_id = f"t{self.fresh}"
        existed = self.state.exists
        events = self.run(JoinRequested(room_id=ROOM, ticket_id=ticket_id, requested_at=self.now))
        if existed:
            assert isinstance(events[0], TicketIssued)
        else:
            assert events == [JoinRejected(room_id=ROOM, ticket_id=ticket_id, at=self.now, reason="unknown_room")]

    @precondition(lambda self: self.issued_ids)
    @rule(data=st.data())
    def join_again_with_an_issued_ticket_id(self, data: st.DataObject) -> None:
        ticket_id = data.draw(st.sampled_from(self.issued_ids))
        assert self.run(JoinRequested(room_id=ROOM, ticket_id=ticket_id, requested_at=self.now)) == []

    @rule(data=st.data(), leave=st.booleans())
    def end_a_ticket(self, data: st.DataObject, leave: bool) -> None:
        ticket_id = data.draw(st.sampled_from([*self.issued_ids, UNKNOWN_TICKET]))
        ticket = self.state.tickets.get(ticket_id)
        was_live = ticket is not None and ticket.state.live
        command: Command
        if leave:
            command = LeaveRequested(room_id=ROOM, ticket_id=ticket_id, requested_at=self.now)
        else:
            command = ExpireRequested(room_id=ROOM, ticket_id=ticket_id, requested_at=self.now, last_heartbeat_at=0.0)
        events = self.run(command)
        if was_live:
            assert isinstance(events[0], TicketLeft if leave else TicketExpired)
            assert all(isinstance(e, TicketAdmitted) for e in events[1:])
        else:
            assert events == []

    @rule(capacity=st.none() | st.integers(0, 6), paused=st.none() | st.booleans())
    def configure(self, capacity: int | None, paused: bool | None) -> None:
        command = RoomConfigureRequested(room_id=ROOM, requested_at=self.now, capacity=capacity, paused=paused)
        if not self.state.exists and capacity is None:
            before = snapshot(self.state)
            with pytest.raises(InvalidCommand):
                decide(self.state, command, self.now)
            assert snapshot(self.state) == before
            return
        self.run(command)

    @precondition(lambda self: self.state.exists)
    @rule()
    def toggle_pause(self) -> None:
        assert self.state.config is not None
        self.run(RoomConfigureRequested(room_id=ROOM, requested_at=self.now, paused=not self.state.config.paused))

    @rule(count=st.integers(1, 4), above_capacity=st.booleans())
    def admit_manually(self, count: int, above_capacity: bool) -> None:
        waiting_before = self.state.waiting
        events = self.run(
            AdmitRequested(room_id=ROOM, requested_at=self.now, count=count, above_capacity=above_capacity)
        )
        if above_capacity and self.state.exists:
            assert len(events) == min(count, waiting_before)

    # ----------------------------------------------------------------------------------------
    # invariants after every step

    @invariant()
    def queue_numbers_are_dense_and_in_issue_order(self) -> None:
        numbers = [e.queue_no for e in self.log if isinstance(e, TicketIssued)]
        assert numbers == list(range(1, len(numbers) + 1))
        assert len(set(self.issued_ids)) == len(self.issued_ids)
        assert self.state.last_queue_no == len(numbers)
        for queue_no, ticket_id in enumerate(self.issued_ids, start=1):
            assert self.state.tickets[ticket_id].queue_no == queue_no
            ticket = self.state.ticket_by_queue_no(queue_no)
            assert ticket is not None and ticket.ticket_id == ticket_id
        assert self.state.ticket_by_queue_no(len(numbers) + 1) is None

    @invariant()
    def an_unpaused_room_has_nobody_waiting_or_no_free_slot(self) -> None:
        config = self.state.config
        if config is not None and not config.paused:
            assert self.state.waiting == 0 or self.state.active >= config.capacity

    @invariant()
    def counters_and_positions_match_a_brute_force_count(self) -> None:
        tickets = list(self.state.tickets.values())
        waiting = sorted((t for t in tickets if t.state is TicketState.WAITING), key=lambda t: t.queue_no)
        assert self.state.waiting == len(waiting)
        assert self.state.active == sum(t.state is TicketState.ADMITTED for t in tickets)
        assert list(self.state.waiting_in_order()) == waiting
        for ticket in tickets:
            ahead = (
                sum(1 for w in waiting if w.queue_no < ticket.queue_no) if ticket.state is TicketState.WAITING else 0
            )
            assert self.state.position(ticket) == ahead

    @invariant()
    def replaying_the_log_rebuilds_the_same_room(self) -> None:
        replayed = apply_all(RoomState(ROOM), list(self.log))
        assert replayed.config == self.state.config
        assert replayed.tickets == self.state.tickets
        assert (replayed.active, replayed.waiting, replayed.last_queue_no) == (
            self.state.active,
            self.state.waiting,
            self.state.last_queue_no,
        )
        assert [replayed.position(t) for t in replayed.tickets.values()] == [
            self.state.position(t) for t in self.state.tickets.values()
        ]


RoomMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_random_command_sequences_keep_the_room_consistent = RoomMachine.TestCase
