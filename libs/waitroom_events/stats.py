"""Statistics snapshots and threshold alerts (``waitroom.room-stats``, ``waitroom.alerts``).

Produced by the stats service; read by the notifier (CloudWatch, SNS) and by the ticketing API
(estimated wait, admin statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

from waitroom_events.base import Message, message_type


@message_type("waitroom.room.stats.v1")
@dataclass(frozen=True, slots=True)
class RoomStats(Message):
    """One room's numbers at ``at``: live gauges, the last full minute, the last five minutes."""

    at: float
    capacity: int
    active: int
    waiting: int
    paused: bool
    # The last closed 1-minute tumbling window [window_start, window_start + 60).
    window_start: float
    joins_1m: int
    admissions_1m: int
    leaves_1m: int
    expiries_waiting_1m: int
    expiries_admitted_1m: int
    # Sliding view of the last 5 minutes up to ``at``.
    joins_5m: int
    admissions_5m: int
    leaves_5m: int
    expiries_waiting_5m: int
    expiries_admitted_5m: int
    # Wait from join to admission of the tickets admitted in the last 5 minutes (None: none admitted).
    wait_p50_s: float | None = None
    wait_p90_s: float | None = None
    wait_p99_s: float | None = None
    wait_max_s: float | None = None
    # Recent admission rate and what it means for the queue: a ticket at position k (0 = next)
    # waits about (k + 1) * seconds_per_admission; estimated_wait_s is that for the last in line.
    admission_rate_per_s: float = 0.0
    seconds_per_admission: float | None = None
    estimated_wait_s: float | None = None
    last_admission_at: float | None = None


@message_type("waitroom.alert.breached.v1")
@dataclass(frozen=True, slots=True)
class ThresholdBreached(Message):
    """A rule's value crossed its threshold. ``alert_id`` is stable: its recovery carries the same id."""

    alert_id: str
    rule: str
    value: float
    threshold: float
    at: float
    summary: str = ""


@message_type("waitroom.alert.recovered.v1")
@dataclass(frozen=True, slots=True)
class ThresholdRecovered(Message):
    alert_id: str
    rule: str
    value: float
    threshold: float
    at: float
    breached_at: float
    summary: str = ""
