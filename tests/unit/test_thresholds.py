"""Threshold rules with hysteresis: one alert per breach, one per recovery, no flapping."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waitroom_core.thresholds import AlertState, Rule, Rules, alert_id, evaluate
from waitroom_events.stats import RoomStats, ThresholdBreached, ThresholdRecovered

T0 = 1_800_000_000.0
ONLY_WAITING = Rules(
    waiting_above=100,
    estimated_wait_above_s=None,
    active_fraction_at_or_above=None,
    stalled_after_s=None,
    expiry_ratio_above=None,
    hysteresis=0.1,
)


def stats(at: float, **values: object) -> RoomStats:
    base = RoomStats(
        room_id="r",
        at=at,
        capacity=10,
        active=0,
        waiting=0,
        paused=False,
        window_start=at - 60,
        joins_1m=0,
        admissions_1m=0,
        leaves_1m=0,
        expiries_waiting_1m=0,
        expiries_admitted_1m=0,
        joins_5m=0,
        admissions_5m=0,
        leaves_5m=0,
        expiries_waiting_5m=0,
        expiries_admitted_5m=0,
    )
    return replace(base, **values)  # type: ignore[arg-type]


def run(rules: Rules, series: list[RoomStats]) -> list[ThresholdBreached | ThresholdRecovered]:
    state = AlertState()
    alerts: list[ThresholdBreached | ThresholdRecovered] = []
    for snap in series:
        state, new = evaluate(rules, state, snap, snap.at)
        alerts += new
    return alerts


def test_a_breach_and_its_recovery_each_raise_one_alert_sharing_one_id() -> None:
    waiting = [50, 101, 150, 120, 80, 20]
    alerts = run(ONLY_WAITING, [stats(T0 + 10 * i, waiting=w) for i, w in enumerate(waiting)])

    breached, recovered = alerts
    assert isinstance(breached, ThresholdBreached) and isinstance(recovered, ThresholdRecovered)
    assert breached.alert_id == recovered.alert_id == alert_id("r", "waiting_high", T0 + 10)
    assert (breached.value, breached.threshold, breached.at) == (101.0, 100, T0 + 10)
    assert (recovered.value, recovered.breached_at, recovered.at) == (80.0, T0 + 10, T0 + 40)


def test_a_value_hovering_around_the_threshold_raises_one_alert_and_no_recovery() -> None:
    waiting = [99, 101, 99, 100, 101, 95, 102, 91, 100, 101]
    alerts = run(ONLY_WAITING, [stats(T0 + i, waiting=w) for i, w in enumerate(waiting)])

    assert [type(a).__name__ for a in alerts] == ["ThresholdBreached"]


def test_without_hysteresis_every_crossing_alerts() -> None:
    rules = replace(ONLY_WAITING, hysteresis=0.0)
    alerts = run(rules, [stats(T0 + i, waiting=w) for i, w in enumerate([101, 100, 101])])

    assert [type(a).__name__ for a in alerts] == ["ThresholdBreached", "ThresholdRecovered", "ThresholdBreached"]


def test_admissions_stalled_fires_after_two_minutes_of_waiting_without_admission_and_recovers_on_one() -> None:
    rules = Rules(
        waiting_above=None, estimated_wait_above_s=None, active_fraction_at_or_above=None, expiry_ratio_above=None
    )
    series = [stats(T0 + t, waiting=3, last_admission_at=T0 - 500) for t in range(0, 130, 10)]
    series.append(stats(T0 + 130, waiting=3, last_admission_at=T0 + 129))

    alerts = run(rules, series)

    assert [(type(a).__name__, a.at) for a in alerts] == [
        ("ThresholdBreached", T0 + 120),
        ("ThresholdRecovered", T0 + 130),
    ]
    assert alerts[0].rule == Rule.ADMISSIONS_STALLED


def test_a_room_with_nobody_waiting_is_never_stalled() -> None:
    rules = Rules(
        waiting_above=None, estimated_wait_above_s=None, active_fraction_at_or_above=None, expiry_ratio_above=None
    )
    assert run(rules, [stats(T0 + t, waiting=0, last_admission_at=None) for t in range(0, 600, 10)]) == []


def test_near_capacity_breaches_at_the_fraction_itself() -> None:
    rules = Rules(waiting_above=None, estimated_wait_above_s=None, stalled_after_s=None, expiry_ratio_above=None)

    alerts = run(rules, [stats(T0, capacity=20, active=18), stats(T0 + 1, capacity=20, active=19)])

    assert [(type(a).__name__, a.value) for a in alerts] == [("ThresholdBreached", 0.95)]


def test_the_expiry_ratio_is_judged_only_on_enough_ended_tickets() -> None:
    rules = Rules(
        waiting_above=None, estimated_wait_above_s=None, active_fraction_at_or_above=None, stalled_after_s=None
    )
    few = stats(T0, expiries_waiting_5m=5, leaves_5m=0)
    many = stats(T0 + 10, expiries_waiting_5m=15, expiries_admitted_5m=5, leaves_5m=10)  # 20 of 30

    assert run(rules, [few]) == []
    [breach] = run(rules, [few, many])
    assert breach.rule == "expiry_ratio_high" and breach.value == pytest.approx(2 / 3)


def test_an_open_alert_of_a_rule_switched_off_is_recovered() -> None:
    state, [breach] = evaluate(ONLY_WAITING, AlertState(), stats(T0, waiting=500), T0)

    state, [recovery] = evaluate(replace(ONLY_WAITING, waiting_above=None), state, stats(T0 + 10, waiting=500), T0 + 10)

    assert isinstance(recovery, ThresholdRecovered) and recovery.alert_id == breach.alert_id
    assert state.open == {}


def test_an_unknown_rule_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        Rules().with_overrides({"waiting_abve": 3})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=250), max_size=60), st.floats(min_value=0, max_value=0.5))
def test_alerts_of_a_rule_alternate_breach_recovery_and_each_recovery_names_its_breach(
    values: list[int], hysteresis: float
) -> None:
    rules = replace(ONLY_WAITING, hysteresis=hysteresis)
    alerts = run(rules, [stats(T0 + i, waiting=v) for i, v in enumerate(values)])

    for i, alert in enumerate(alerts):
        assert isinstance(alert, ThresholdBreached if i % 2 == 0 else ThresholdRecovered)
        if i % 2 == 1:
            assert alert.alert_id == alerts[i - 1].alert_id


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=91, max_value=109), min_size=1, max_size=60))
def test_no_value_inside_the_hysteresis_band_ever_causes_a_recovery(values: list[int]) -> None:
    # Values between 90 (100 * (1 - 0.1)) and 109 may breach once; they never recover.
    alerts = run(ONLY_WAITING, [stats(T0 + i, waiting=v) for i, v in enumerate([101, *values])])

    assert [type(a).__name__ for a in alerts] == ["ThresholdBreached"]
