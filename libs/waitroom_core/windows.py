"""Room statistics as pure functions: live gauges, per-second buckets, windows, percentiles, snapshots.

The stats service folds ``room-events`` into two kinds of state, both keyed by room:

* :class:`Gauges`, the live numbers (capacity, active, waiting, paused) and a few instants;
* one :class:`Bucket` per room and event-time second (``floor(event.at)``): the counts of that
  second and the waits (join to admission) of the tickets admitted in it.

Every view is then read from the buckets at snapshot time ``now``:

* the 1-minute tumbling windows ``[k*60, k*60 + 60)``, aligned to the epoch, so every worker and
  every test agrees on their edges; the snapshot reports the last *closed* one;
* the sliding 5-minute view: the 300 whole seconds ending with the second that holds ``now``.

One-second resolution keeps the sliding view exact to the second without storing every event, and
each event changes exactly one bucket. Time is always an argument: nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from waitroom_events.events import RoomConfigured, RoomEvent, TicketAdmitted, TicketExpired, TicketIssued, TicketLeft
from waitroom_events.stats import RoomStats

#: Tumbling window size: operators read "per minute" numbers.
MINUTE_S = 60
#: The sliding view: long enough to smooth bursts, short enough to follow a surge as it changes.
SLIDING_S = 300
#: Buckets older than this are never read (5 minutes of sliding view plus the minute before it,
#: with margin for late events and for the recent windows the admin call shows).
BUCKET_RETENTION_S = 15 * 60
PERCENTILES = (50, 90, 99)


def second_of(at: float) -> int:
    """The bucket (event-time second) an instant falls in."""
    return math.floor(at)


def minute_start(at: float) -> int:
    return math.floor(at / MINUTE_S) * MINUTE_S


# --------------------------------------------------------------------------------------------
# percentiles


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``p`` % of the values at or below it.

    Always one of the observed values, so a scripted scenario has one exact answer.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 < p <= 100:
        raise ValueError("p must be in (0, 100]")
    rank = math.ceil(p / 100 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


@dataclass(frozen=True, slots=True)
class WaitSummary:
    count: int = 0
    p50_s: float | None = None
    p90_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None

    @staticmethod
    def of(waits: Iterable[float]) -> WaitSummary:
        values = sorted(waits)
        if not values:
            return WaitSummary()
        p50, p90, p99 = (percentile(values, p) for p in PERCENTILES)
        return WaitSummary(count=len(values), p50_s=p50, p90_s=p90, p99_s=p99, max_s=values[-1])


# --------------------------------------------------------------------------------------------
# buckets


@dataclass(frozen=True, slots=True)
class Bucket:
    """What happened in one room during one event-time second."""

    joins: int = 0
    admissions: int = 0
    leaves: int = 0
    expiries_waiting: int = 0
    expiries_admitted: int = 0
    #: waits (seconds from join to admission) of the tickets admitted in this second
    waits: tuple[float, ...] = ()
    first_admission_at: float | None = None
    last_admission_at: float | None = None


def add_to_bucket(bucket: Bucket, event: RoomEvent, issued_at: float | None = None) -> Bucket:
    """``bucket`` with ``event`` counted. ``issued_at`` is the admitted ticket's join time, if known."""
    match event:
        case TicketIssued():
            return replace(bucket, joins=bucket.joins + 1)
        case TicketAdmitted():
            waits = bucket.waits if issued_at is None else (*bucket.waits, max(0.0, event.at - issued_at))
            first = event.at if bucket.first_admission_at is None else min(bucket.first_admission_at, event.at)
            last = event.at if bucket.last_admission_at is None else max(bucket.last_admission_at, event.at)
            return replace(
                bucket, admissions=bucket.admissions + 1, waits=waits, first_admission_at=first, last_admission_at=last
            )
        case TicketLeft():
            return replace(bucket, leaves=bucket.leaves + 1)
        case TicketExpired() if event.was_admitted:
            return replace(bucket, expiries_admitted=bucket.expiries_admitted + 1)
        case TicketExpired():
            return replace(bucket, expiries_waiting=bucket.expiries_waiting + 1)
    return bucket


def counts_bucket(event: RoomEvent) -> bool:
    """Whether ``event`` changes a bucket (configuration and rejected joins do not)."""
    return isinstance(event, TicketIssued | TicketAdmitted | TicketLeft | TicketExpired)


# --------------------------------------------------------------------------------------------
# windows


@dataclass(frozen=True, slots=True)
class WindowCounts:
    """The sum of the buckets of ``[start, end)``."""

    start: float
    end: float
    joins: int = 0
    admissions: int = 0
    leaves: int = 0
    expiries_waiting: int = 0
    expiries_admitted: int = 0
    waits: WaitSummary = field(default_factory=WaitSummary)
    first_admission_at: float | None = None
    last_admission_at: float | None = None

    @property
    def expiries(self) -> int:
        return self.expiries_waiting + self.expiries_admitted


BucketLookup = Callable[[int], Bucket | None]


def window(lookup: BucketLookup, start: int, end: int) -> WindowCounts:
    """Sum the buckets of the seconds ``start <= s < end``."""
    joins = admissions = leaves = exp_w = exp_a = 0
    waits: list[float] = []
    first: float | None = None
    last: float | None = None
    for second in range(start, end):
        bucket = lookup(second)
        if bucket is None:
            continue
        joins += bucket.joins
        admissions += bucket.admissions
        leaves += bucket.leaves
        exp_w += bucket.expiries_waiting
        exp_a += bucket.expiries_admitted
        waits.extend(bucket.waits)
        if bucket.first_admission_at is not None:
            first = bucket.first_admission_at if first is None else min(first, bucket.first_admission_at)
        if bucket.last_admission_at is not None:
            last = bucket.last_admission_at if last is None else max(last, bucket.last_admission_at)
    return WindowCounts(
        start=float(start),
        end=float(end),
        joins=joins,
        admissions=admissions,
        leaves=leaves,
        expiries_waiting=exp_w,
        expiries_admitted=exp_a,
        waits=WaitSummary.of(waits),
        first_admission_at=first,
        last_admission_at=last,
    )


def last_closed_minute(lookup: BucketLookup, now: float) -> WindowCounts:
    """The last 1-minute tumbling window that ended at or before ``now``."""
    start = minute_start(now) - MINUTE_S
    return window(lookup, start, start + MINUTE_S)


def minute_windows(lookup: BucketLookup, now: float, count: int) -> list[WindowCounts]:
    """The ``count`` most recent closed 1-minute windows, oldest first."""
    newest = minute_start(now) - MINUTE_S
    return [window(lookup, s, s + MINUTE_S) for s in range(newest - (count - 1) * MINUTE_S, newest + 1, MINUTE_S)]


def sliding(lookup: BucketLookup, now: float, span_s: int = SLIDING_S) -> WindowCounts:
    """The ``span_s`` whole seconds ending with the one that holds ``now``."""
    end = second_of(now) + 1
    return window(lookup, end - span_s, end)


# --------------------------------------------------------------------------------------------
# admission rate


def admission_rate(recent: WindowCounts, now: float, observed_since: float | None) -> float:
    """Admissions per second, from the admissions of the sliding view.

    ``n`` admissions between ``first`` and ``last`` are ``n - 1`` gaps; counting the time since the
    last one as (at least) one more gap makes the rate fall as soon as admissions stop, instead of
    holding the old pace until the window empties. A single admission says little: it is spread over
    the whole view (or the time the room has been observed, if shorter).
    """
    n = recent.admissions
    if n == 0 or recent.first_admission_at is None or recent.last_admission_at is None:
        return 0.0
    if n == 1:
        since = recent.start if observed_since is None else max(recent.start, observed_since)
        return 1.0 / max(now - since, 1.0)
    gap = (recent.last_admission_at - recent.first_admission_at) / (n - 1)
    span = max(recent.last_admission_at - recent.first_admission_at, 0.0) + max(now - recent.last_admission_at, gap)
    if span <= 0:
        return float(n)  # a burst inside one instant: as fast as we can tell
    return n / span


def estimated_wait(position: int, seconds_per_admission: float | None) -> float | None:
    """Expected wait of the ticket at ``position`` (0 = next in line)."""
    if seconds_per_admission is None:
        return None
    return (position + 1) * seconds_per_admission


# --------------------------------------------------------------------------------------------
# gauges


@dataclass(frozen=True, slots=True)
class Gauges:
    """A room's live numbers, folded from its events."""

    capacity: int = 0
    paused: bool = False
    active: int = 0
    waiting: int = 0
    configured: bool = False
    last_admission_at: float | None = None
    #: the first event of the room this fold saw
    observed_since: float | None = None
    last_event_at: float | None = None


def evolve_gauges(gauges: Gauges, event: RoomEvent) -> Gauges:
    """``gauges`` after ``event``. The sequencer's events are consistent, so counting is enough."""
    at = event.at
    g = replace(
        gauges,
        observed_since=at if gauges.observed_since is None else gauges.observed_since,
        last_event_at=at if gauges.last_event_at is None else max(gauges.last_event_at, at),
    )
    match event:
        case RoomConfigured():
            return replace(g, capacity=event.capacity, paused=event.paused, configured=True)
        case TicketIssued():
            return replace(g, waiting=g.waiting + 1)
        case TicketAdmitted():
            return replace(g, waiting=max(0, g.waiting - 1), active=g.active + 1, last_admission_at=at)
        case TicketLeft() | TicketExpired() if event.was_admitted:
            return replace(g, active=max(0, g.active - 1))
        case TicketLeft() | TicketExpired():
            return replace(g, waiting=max(0, g.waiting - 1))
    return g


def is_live(gauges: Gauges, now: float, idle_grace_s: float) -> bool:
    """Whether a room deserves snapshots: it holds tickets, or its sliding view is not empty yet."""
    if gauges.active > 0 or gauges.waiting > 0:
        return True
    return gauges.last_event_at is not None and now - gauges.last_event_at <= SLIDING_S + idle_grace_s


# --------------------------------------------------------------------------------------------
# the snapshot


def snapshot(room_id: str, gauges: Gauges, lookup: BucketLookup, now: float) -> RoomStats:
    """The room's :class:`RoomStats` at ``now``."""
    minute = last_closed_minute(lookup, now)
    recent = sliding(lookup, now)
    rate = admission_rate(recent, now, gauges.observed_since)
    per_admission = 1.0 / rate if rate > 0 else None
    if gauges.waiting == 0:
        wait: float | None = 0.0
    else:
        wait = estimated_wait(gauges.waiting - 1, per_admission)
    return RoomStats(
        room_id=room_id,
        at=now,
        capacity=gauges.capacity,
        active=gauges.active,
        waiting=gauges.waiting,
        paused=gauges.paused,
        window_start=minute.start,
        joins_1m=minute.joins,
        admissions_1m=minute.admissions,
        leaves_1m=minute.leaves,
        expiries_waiting_1m=minute.expiries_waiting,
        expiries_admitted_1m=minute.expiries_admitted,
        joins_5m=recent.joins,
        admissions_5m=recent.admissions,
        leaves_5m=recent.leaves,
        expiries_waiting_5m=recent.expiries_waiting,
        expiries_admitted_5m=recent.expiries_admitted,
        wait_p50_s=recent.waits.p50_s,
        wait_p90_s=recent.waits.p90_s,
        wait_p99_s=recent.waits.p99_s,
        wait_max_s=recent.waits.max_s,
        admission_rate_per_s=rate,
        seconds_per_admission=per_admission,
        estimated_wait_s=wait,
        last_admission_at=gauges.last_admission_at,
    )
