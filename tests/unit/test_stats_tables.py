"""The stats tables' storage format: what a worker writes to a changelog, the next one reads back."""

from __future__ import annotations

from test_thresholds import T0, stats
from test_windows import SCENARIO, fold

from waitroom_core.thresholds import AlertState, OpenAlert, Rules, evaluate
from waitroom_core.windows import Bucket, Gauges
from waitroom_stats.tables import (
    alert_state_from_table,
    alert_state_to_table,
    bucket_from_table,
    bucket_to_table,
    gauges_from_table,
    gauges_to_table,
)


def test_buckets_and_gauges_survive_their_json_form() -> None:
    gauges, buckets = fold(SCENARIO)

    assert gauges_from_table(gauges_to_table(gauges)) == gauges
    for bucket in buckets.values():
        assert bucket_from_table(bucket_to_table(bucket)) == bucket


def test_the_state_survives_its_json_form() -> None:
    state, _ = evaluate(Rules(), AlertState(), stats(T0, waiting=5000, capacity=1, active=1), T0)

    assert alert_state_from_table(alert_state_to_table(state)) == state
    assert set(state.open) == {"waiting_high", "near_capacity"}


def test_values_written_by_earlier_workers_keep_their_keys() -> None:
    bucket = Bucket(
        joins=1,
        admissions=2,
        leaves=3,
        expiries_waiting=4,
        expiries_admitted=5,
        waits=(6.0, 7.5),
        first_admission_at=8.0,
        last_admission_at=9.0,
    )
    gauges = Gauges(
        capacity=10,
        paused=True,
        active=7,
        waiting=3,
        configured=True,
        last_admission_at=1.5,
        observed_since=0.5,
        last_event_at=2.5,
    )
    state = AlertState(open={"waiting_high": OpenAlert("r:waiting_high:1000", 1.0)}, waiting_since=0.25)

    assert bucket_to_table(bucket) == {"j": 1, "a": 2, "l": 3, "ew": 4, "ea": 5, "w": [6.0, 7.5], "af": 8.0, "al": 9.0}
    assert gauges_to_table(gauges) == {
        "capacity": 10,
        "paused": True,
        "active": 7,
        "waiting": 3,
        "configured": True,
        "last_admission_at": 1.5,
        "observed_since": 0.5,
        "last_event_at": 2.5,
    }
    assert alert_state_to_table(state) == {
        "open": {"waiting_high": ["r:waiting_high:1000", 1.0]},
        "waiting_since": 0.25,
    }


def test_an_empty_or_missing_value_reads_as_the_initial_one() -> None:
    assert bucket_from_table(None) == bucket_from_table({}) == Bucket()
    assert gauges_from_table(None) == gauges_from_table({}) == Gauges()
    assert alert_state_from_table(None) == alert_state_from_table({}) == AlertState()
