"""Threshold rules over room snapshots, with hysteresis: ``evaluate(rules, state, snapshot, now)``.

A rule measures one value of a :class:`RoomStats` snapshot. It *breaches* when the value crosses
its threshold and *recovers* only once the value has fallen clearly back, below
``threshold * (1 - hysteresis)``. Between the two edges nothing changes, so a value hovering at the
threshold raises one alert, not one per snapshot. A breach and its recovery share one ``alert_id``
(room, rule and the breach instant in milliseconds), so a consumer can pair them and drop repeats.

Pure: the state is a value, passed in and returned; time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from waitroom_events.stats import RoomStats, ThresholdBreached, ThresholdRecovered

Alert = ThresholdBreached | ThresholdRecovered


class Rule(StrEnum):
    WAITING_HIGH = "waiting_high"
    ESTIMATED_WAIT_HIGH = "estimated_wait_high"
    NEAR_CAPACITY = "near_capacity"
    ADMISSIONS_STALLED = "admissions_stalled"
    EXPIRY_RATIO_HIGH = "expiry_ratio_high"


@dataclass(frozen=True, slots=True)
class Rules:
    """A room's thresholds. ``None`` switches a rule off."""

    #: more tickets waiting than this
    waiting_above: float | None = 1000
    #: the last in line would wait longer than this
    estimated_wait_above_s: float | None = 900
    #: active at or above this fraction of capacity
    active_fraction_at_or_above: float | None = 0.95
    #: tickets wait and nobody has been admitted for this long
    stalled_after_s: float | None = 120
    #: more than this share of the tickets that ended in the last 5 minutes expired (instead of leaving)
    expiry_ratio_above: float | None = 0.5
    #: the expiry ratio is judged only on at least this many ended tickets
    expiry_ratio_min_ended: int = 20
    #: a breached value must fall below ``threshold * (1 - hysteresis)`` to recover
    hysteresis: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.hysteresis < 1:
            raise ValueError("hysteresis must be in [0, 1)")
        if self.expiry_ratio_min_ended < 1:
            raise ValueError("expiry_ratio_min_ended must be at least 1")
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value < 0:
                raise ValueError(f"{f.name} must not be negative")

    def with_overrides(self, overrides: dict[str, Any]) -> Rules:
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown rule settings: {sorted(unknown)}")
        return replace(self, **overrides)


@dataclass(frozen=True, slots=True)
class OpenAlert:
    alert_id: str
    breached_at: float


@dataclass(frozen=True, slots=True)
class AlertState:
    """What a room's rules remember between snapshots."""

    open: dict[str, OpenAlert] = field(default_factory=dict)
    #: since when tickets have been waiting without interruption (for the stalled rule)
    waiting_since: float | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    """One rule's value against its threshold. ``inclusive``: breach at the threshold, not only above."""

    value: float
    threshold: float
    inclusive: bool
    unit: str


def alert_id(room_id: str, rule: str, breached_at: float) -> str:
    return f"{room_id}:{rule}:{int(breached_at * 1000)}"


def evaluate(
    rules: Rules, previous: AlertState, snapshot: RoomStats, now: float
) -> tuple[AlertState, list[ThresholdBreached | ThresholdRecovered]]:
    """The new state and the alerts (breaches and recoveries) that ``snapshot`` causes."""
    waiting_since = _waiting_since(previous.waiting_since, snapshot)
    readings = _readings(rules, snapshot, waiting_since, now)
    opened = dict(previous.open)
    alerts: list[ThresholdBreached | ThresholdRecovered] = []
    for rule in Rule:
        reading = readings.get(rule)
        current = opened.get(rule)
        if reading is None:
            if current is not None and _disabled(rules, rule):
                # A rule switched off must not leave its alert open for ever.
                del opened[rule]
                alerts.append(_recovered(snapshot, rule, current, 0.0, 0.0, now, "rule switched off"))
            continue  # not measurable now (no capacity, too few tickets): keep the state
        if current is None and _breaches(reading):
            opened[rule] = OpenAlert(alert_id(snapshot.room_id, rule, now), now)
            alerts.append(
                ThresholdBreached(
                    room_id=snapshot.room_id,
                    alert_id=opened[rule].alert_id,
                    rule=rule.value,
                    value=reading.value,
                    threshold=reading.threshold,
                    at=now,
                    summary=f"{rule.value}: {_fmt(reading.value)}{reading.unit}, "
                    f"{'at or above' if reading.inclusive else 'above'} {_fmt(reading.threshold)}{reading.unit}",
                )
            )
        elif current is not None and _recovers(reading, rules.hysteresis):
            del opened[rule]
            summary = (
                f"{rule.value}: {_fmt(reading.value)}{reading.unit}, "
                f"back below {_fmt(reading.threshold * (1 - rules.hysteresis))}{reading.unit}"
            )
            alerts.append(_recovered(snapshot, rule, current, reading.value, reading.threshold, now, summary))
    return AlertState(open=opened, waiting_since=waiting_since), alerts


def _recovered(
    snapshot: RoomStats, rule: Rule, current: OpenAlert, value: float, threshold: float, now: float, summary: str
) -> ThresholdRecovered:
    return ThresholdRecovered(
        room_id=snapshot.room_id,
        alert_id=current.alert_id,
        rule=rule.value,
        value=value,
        threshold=threshold,
        at=now,
        breached_at=current.breached_at,
        summary=summary,
    )


def _breaches(reading: Reading) -> bool:
    if reading.inclusive:
        return reading.value >= reading.threshold
    return reading.value > reading.threshold


def _recovers(reading: Reading, hysteresis: float) -> bool:
    floor = reading.threshold * (1 - hysteresis)
    if hysteresis == 0:
        return not _breaches(reading)
    return reading.value < floor


def _disabled(rules: Rules, rule: Rule) -> bool:
    setting = {
        Rule.WAITING_HIGH: rules.waiting_above,
        Rule.ESTIMATED_WAIT_HIGH: rules.estimated_wait_above_s,
        Rule.NEAR_CAPACITY: rules.active_fraction_at_or_above,
        Rule.ADMISSIONS_STALLED: rules.stalled_after_s,
        Rule.EXPIRY_RATIO_HIGH: rules.expiry_ratio_above,
    }[rule]
    return setting is None


def _waiting_since(previous: float | None, snapshot: RoomStats) -> float | None:
    if snapshot.waiting == 0:
        return None
    return snapshot.at if previous is None else previous


def _readings(rules: Rules, s: RoomStats, waiting_since: float | None, now: float) -> dict[Rule, Reading]:
    readings: dict[Rule, Reading] = {}
    if rules.waiting_above is not None:
        readings[Rule.WAITING_HIGH] = Reading(float(s.waiting), rules.waiting_above, False, " waiting")
    if rules.estimated_wait_above_s is not None:
        wait = s.estimated_wait_s
        if wait is not None:
            readings[Rule.ESTIMATED_WAIT_HIGH] = Reading(wait, rules.estimated_wait_above_s, False, " s")
    if rules.active_fraction_at_or_above is not None and s.capacity > 0:
        readings[Rule.NEAR_CAPACITY] = Reading(
            s.active / s.capacity, rules.active_fraction_at_or_above, True, " of capacity"
        )
    if rules.stalled_after_s is not None:
        readings[Rule.ADMISSIONS_STALLED] = Reading(
            _stalled_for(s, waiting_since, now), rules.stalled_after_s, True, " s without admission"
        )
    if rules.expiry_ratio_above is not None:
        expired = s.expiries_waiting_5m + s.expiries_admitted_5m
        ended = expired + s.leaves_5m
        if ended >= rules.expiry_ratio_min_ended:
            readings[Rule.EXPIRY_RATIO_HIGH] = Reading(expired / ended, rules.expiry_ratio_above, False, " expired")
        elif ended == 0:
            readings[Rule.EXPIRY_RATIO_HIGH] = Reading(0.0, rules.expiry_ratio_above, False, " expired")
    return readings


def _stalled_for(s: RoomStats, waiting_since: float | None, now: float) -> float:
    """How long tickets have waited with no admission: 0 when nobody waits."""
    if s.waiting == 0 or waiting_since is None:
        return 0.0
    progress = waiting_since if s.last_admission_at is None else max(waiting_since, s.last_admission_at)
    return max(0.0, now - progress)


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.2f}"
