"""The Fenwick tree behind room positions: prefix sums against brute force, and positions at scale."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waitroom_core.fenwick import Fenwick
from waitroom_core.room import RoomState, apply_all, decide, evolve
from waitroom_events.commands import ExpireRequested
from waitroom_events.events import RoomConfigured, TicketIssued

adds = st.lists(st.tuples(st.integers(1, 300), st.integers(-5, 5)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(initial_size=st.integers(0, 40), operations=adds)
def test_prefix_sums_equal_brute_force_sums_under_random_adds_growing_beyond_the_initial_size(
    initial_size: int, operations: list[tuple[int, int]]
) -> None:
    tree = Fenwick(initial_size)
    counts = [0] * 301

    for index, delta in operations:
        tree.add(index, delta)
        counts[index] += delta

    assert tree.size >= max((index for index, _ in operations), default=0)
    for index in range(0, 301):
        assert tree.prefix(index) == sum(counts[1 : index + 1])


@settings(max_examples=100, deadline=None)
@given(initial_size=st.integers(1, 16), operations=adds)
def test_prefix_sums_stay_right_between_adds_across_every_growth(
    initial_size: int, operations: list[tuple[int, int]]
) -> None:
    tree = Fenwick(initial_size)
    counts = [0] * 301

    for index, delta in operations:
        tree.add(index, delta)
        counts[index] += delta
        assert tree.prefix(index) == sum(counts[1 : index + 1])
        assert tree.prefix(300) == sum(counts)


def test_a_prefix_beyond_the_size_sums_everything_and_a_prefix_of_zero_or_less_is_empty() -> None:
    tree = Fenwick(4)
    tree.add(3, 2)
    tree.add(4, 5)

    assert tree.prefix(1_000) == 7
    assert tree.prefix(0) == 0
    assert tree.prefix(-1) == 0


def test_a_tree_of_size_zero_grows_on_its_first_add() -> None:
    tree = Fenwick(0)

    tree.add(5, 1)

    assert (tree.size >= 5, tree.prefix(4), tree.prefix(5)) == (True, 0, 1)


@pytest.mark.parametrize("index", [0, -1])
def test_an_index_below_one_is_refused(index: int) -> None:
    with pytest.raises(IndexError):
        Fenwick(8).add(index, 1)


@pytest.mark.slow  # about 15 s: a million evolve calls
def test_positions_are_exact_in_a_room_with_a_million_waiting_tickets() -> None:
    room = "launch"
    total = 1_000_000
    state = RoomState(room)
    evolve(
        state,
        RoomConfigured(
            room_id=room,
            at=0.0,
            capacity=0,
            heartbeat_timeout_s=20.0,
            heartbeat_interval_s=5.0,
            target_url=None,
            paused=False,
        ),
    )
    for queue_no in range(1, total + 1):
        evolve(state, TicketIssued(room_id=room, ticket_id=f"t{queue_no}", queue_no=queue_no, at=1.0))
    last = state.tickets[f"t{total}"]

    assert (state.waiting, state.position(last)) == (total, total - 1)

    apply_all(state, decide(state, ExpireRequested(room_id=room, ticket_id="t500000", requested_at=2.0), 2.0))

    assert (state.waiting, state.position(last)) == (total - 1, total - 2)
    assert state.position(state.tickets["t500001"]) == 499_999
    assert state.position(state.tickets["t499999"]) == 499_998
