"""Windows, percentiles and snapshots of the stats core, on scripted histories with known numbers."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from waitroom_core.windows import (
    Bucket,
    Gauges,
    WaitSummary,
    add_to_bucket,
    admission_rate,
    estimated_wait,
    evolve_gauges,
    minute_windows,
    percentile,
    second_of,
    sliding,
    snapshot,
    window,
)
from waitroom_events.events import RoomConfigured, RoomEvent, TicketAdmitted, TicketExpired, TicketIssued, TicketLeft

ROOM = "r"
T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


def fold(events: list[RoomEvent]) -> tuple[Gauges, dict[int, Bucket]]:
    """What the stats service does per event, without Kafka."""
    gauges = Gauges()
    buckets: dict[int, Bucket] = {}
    issued: dict[int, float] = {}
    for event in events:
        gauges = evolve_gauges(gauges, event)
        if isinstance(event, TicketIssued):
            issued[event.queue_no] = event.at
        issued_at = issued.get(event.queue_no) if isinstance(event, TicketAdmitted) else None
        second = second_of(event.at)
        buckets[second] = add_to_bucket(buckets.get(second, Bucket()), event, issued_at)
    return gauges, buckets


def issued(q: int, at: float) -> TicketIssued:
    return TicketIssued(room_id=ROOM, ticket_id=f"t{q}", queue_no=q, at=at)


def admitted(q: int, at: float) -> TicketAdmitted:
    return TicketAdmitted(room_id=ROOM, ticket_id=f"t{q}", queue_no=q, at=at)


def left(q: int, at: float, was_admitted: bool = True) -> TicketLeft:
    return TicketLeft(room_id=ROOM, ticket_id=f"t{q}", queue_no=q, at=at, was_admitted=was_admitted)


def expired(q: int, at: float, was_admitted: bool) -> TicketExpired:
    return TicketExpired(room_id=ROOM, ticket_id=f"t{q}", queue_no=q, at=at, was_admitted=was_admitted)


def configured(at: float, capacity: int = 2) -> RoomConfigured:
    return RoomConfigured(
        room_id=ROOM,
        at=at,
        capacity=capacity,
        heartbeat_timeout_s=20.0,
        heartbeat_interval_s=5.0,
        target_url=None,
        paused=False,
    )


# A room of capacity 2 over two minutes: 6 joins, 5 admissions with waits 0, 0, 10, 20, 45,
# 2 leaves, 1 expiry while admitted, 1 expiry while waiting.
SCENARIO: list[RoomEvent] = [
    configured(T0),
    issued(1, T0 + 1.5),
    admitted(1, T0 + 1.5),  # wait 0
    issued(2, T0 + 2.0),
    admitted(2, T0 + 2.0),  # wait 0
    issued(3, T0 + 5.0),
    issued(4, T0 + 10.0),
    issued(5, T0 + 30.0),
    left(1, T0 + 15.0),
    admitted(3, T0 + 15.0),  # wait 10
    expired(2, T0 + 30.0, was_admitted=True),
    admitted(4, T0 + 30.0),  # wait 20
    # the next minute
    issued(6, T0 + 61.0),
    expired(6, T0 + 70.0, was_admitted=False),
    left(3, T0 + 75.0),
    admitted(5, T0 + 75.0),  # wait 45
]


def lookup_of(buckets: dict[int, Bucket]):  # type: ignore[no-untyped-def]
    return buckets.get


def test_the_scripted_history_gives_exact_counts_in_each_minute_window() -> None:
    _, buckets = fold(SCENARIO)

    first, second = minute_windows(buckets.get, T0 + 125, count=2)

    assert (first.start, first.end) == (T0, T0 + 60)
    assert (first.joins, first.admissions, first.leaves, first.expiries_waiting, first.expiries_admitted) == (
        5,
        4,
        1,
        0,
        1,
    )
    assert (second.joins, second.admissions, second.leaves, second.expiries_waiting, second.expiries_admitted) == (
        1,
        1,
        1,
        1,
        0,
    )
    assert first.waits == WaitSummary(count=4, p50_s=0.0, p90_s=20.0, p99_s=20.0, max_s=20.0)
    assert second.waits == WaitSummary(count=1, p50_s=45.0, p90_s=45.0, p99_s=45.0, max_s=45.0)


def test_the_snapshot_reports_live_gauges_the_last_closed_minute_and_the_last_five_minutes() -> None:
    gauges, buckets = fold(SCENARIO)

    stats = snapshot(ROOM, gauges, buckets.get, now=T0 + 130.0)

    assert (stats.capacity, stats.active, stats.waiting, stats.paused) == (2, 2, 0, False)
    assert stats.window_start == T0 + 60
    assert (stats.joins_1m, stats.admissions_1m, stats.leaves_1m) == (1, 1, 1)
    assert (stats.expiries_waiting_1m, stats.expiries_admitted_1m) == (1, 0)
    assert (stats.joins_5m, stats.admissions_5m, stats.leaves_5m) == (6, 5, 2)
    assert (stats.expiries_waiting_5m, stats.expiries_admitted_5m) == (1, 1)
    assert (stats.wait_p50_s, stats.wait_p90_s, stats.wait_p99_s, stats.wait_max_s) == (10.0, 45.0, 45.0, 45.0)
    assert stats.last_admission_at == T0 + 75.0
    assert stats.estimated_wait_s == 0.0  # nobody waits


def test_the_sliding_view_forgets_a_second_exactly_300_seconds_later() -> None:
    _, buckets = fold([issued(1, T0 + 10.25)])

    assert sliding(buckets.get, T0 + 309.99).joins == 1
    assert sliding(buckets.get, T0 + 310.0).joins == 0


def test_a_window_with_no_admission_has_no_wait_percentiles() -> None:
    _, buckets = fold([issued(1, T0 + 1)])

    counts = window(buckets.get, int(T0), int(T0) + 60)

    assert counts.waits == WaitSummary()


def test_percentiles_are_nearest_rank_over_the_observed_values() -> None:
    values = [float(v) for v in range(1, 101)]

    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50.0, 90.0, 99.0, 100.0]
    assert percentile([7.0], 50) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=200),
    st.sampled_from([50, 90, 99]),
)
def test_a_percentile_is_an_observed_value_with_enough_values_at_or_below_it(values: list[float], p: int) -> None:
    ordered = sorted(values)

    result = percentile(ordered, p)

    assert result in ordered
    at_or_below = sum(1 for v in ordered if v <= result)
    below = sum(1 for v in ordered if v < result)
    assert at_or_below >= math.ceil(p / 100 * len(ordered))
    assert below < math.ceil(p / 100 * len(ordered))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=900, allow_nan=False), max_size=60),
    st.floats(min_value=0, max_value=1200, allow_nan=False),
)
def test_the_sliding_view_counts_exactly_the_events_of_the_last_300_whole_seconds(
    offsets: list[float], now_offset: float
) -> None:
    events = [issued(q, T0 + off) for q, off in enumerate(sorted(offsets), start=1)]
    _, buckets = fold(events)
    now = T0 + now_offset

    expected = sum(1 for e in events if math.floor(now) - 299 <= math.floor(e.at) <= math.floor(now))

    assert sliding(buckets.get, now).joins == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["join", "admit", "leave", "expire"]), max_size=80))
def test_gauges_never_go_negative_and_match_a_recount_of_live_tickets(steps: list[str]) -> None:
    # Drive a consistent history (like the sequencer's) and compare the gauges with a recount.
    waiting: list[int] = []
    active: list[int] = []
    events: list[RoomEvent] = [configured(T0, capacity=3)]
    q = 0
    for i, step in enumerate(steps):
        at = T0 + i
        if step == "join":
            q += 1
            waiting.append(q)
            events.append(issued(q, at))
        elif step == "admit" and waiting:
            n = waiting.pop(0)
            active.append(n)
            events.append(admitted(n, at))
        elif step == "leave" and active:
            events.append(left(active.pop(0), at))
        elif step == "expire" and waiting:
            events.append(expired(waiting.pop(), at, was_admitted=False))
    gauges, _ = fold(events)

    assert (gauges.waiting, gauges.active) == (len(waiting), len(active))


def test_a_steady_admission_pace_gives_its_rate_and_a_stall_makes_the_rate_fall() -> None:
    events: list[RoomEvent] = [configured(T0)]
    for q in range(1, 41):
        events += [issued(q, T0 + 0.1), admitted(q, T0 + q * 0.5)]
    _, buckets = fold(events)
    steady = T0 + 20.2

    rate = admission_rate(sliding(buckets.get, steady), steady, T0)
    later = T0 + 60.0
    stalled = admission_rate(sliding(buckets.get, later), later, T0)

    assert abs(rate - 2.0) / 2.0 < 0.05
    assert stalled < rate / 2


def test_the_estimated_wait_grows_with_the_position() -> None:
    assert estimated_wait(0, 2.0) == 2.0
    assert estimated_wait(9, 2.0) == 20.0
    assert estimated_wait(3, None) is None
