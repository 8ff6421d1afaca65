"""The notifier's pure decisions: snapshots to metric datums and batches, alerts to mails, alarms."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waitroom_events.stats import RoomStats, ThresholdBreached, ThresholdRecovered
from waitroom_notifier.alarms import AlarmRule, alarm_definitions, alarm_differs
from waitroom_notifier.alerts import alert_notification, format_duration, sns_subject
from waitroom_notifier.metrics import (
    MAX_DATUMS_PER_CALL,
    MAX_REQUEST_BYTES,
    METRICS,
    MetricDatum,
    batch_datums,
    room_metric_datums,
)

AT = 1_790_000_000.0


def snapshot(room_id: str = "concert", **fields: object) -> RoomStats:
    values: dict[str, object] = dict(
        room_id=room_id,
        at=AT,
        capacity=100,
        active=97,
        waiting=1234,
        paused=False,
        window_start=AT - 70,
        joins_1m=300,
        admissions_1m=40,
        leaves_1m=5,
        expiries_waiting_1m=3,
        expiries_admitted_1m=4,
        joins_5m=1500,
        admissions_5m=200,
        leaves_5m=25,
        expiries_waiting_5m=15,
        expiries_admitted_5m=20,
        wait_p90_s=412.5,
        estimated_wait_s=1850.0,
    )
    values.update(fields)
    return RoomStats(**values)  # type: ignore[arg-type]


def by_name(datums: list[MetricDatum]) -> dict[str, MetricDatum]:
    return {d.name: d for d in datums}


def test_a_snapshot_becomes_one_datum_per_metric_with_the_room_and_the_configured_dimensions() -> None:
    datums = room_metric_datums(snapshot(), {"Environment": "prod"}, rollup=False)

    assert [d.name for d in datums] == [m.name for m in METRICS]
    values = {d.name: d.value for d in datums}
    assert values == {
        "Active": 97,
        "Waiting": 1234,
        "Capacity": 100,
        "JoinsPerMinute": 300,
        "AdmissionsPerMinute": 40,
        "ExpiriesPerMinute": 7,
        "WaitP90": 412.5,
        "EstimatedWait": 1850.0,
    }
    assert {d.dimensions for d in datums} == {(("Environment", "prod"), ("Room", "concert"))}
    assert {d.timestamp for d in datums} == {AT}
    assert by_name(datums)["WaitP90"].unit == "Seconds"
    assert by_name(datums)["Waiting"].unit == "Count"


def test_the_rollup_repeats_every_metric_without_the_room_dimension() -> None:
    datums = room_metric_datums(snapshot(), {"Environment": "prod"}, rollup=True)

    per_room = [d for d in datums if ("Room", "concert") in d.dimensions]
    rollup = [d for d in datums if d.dimensions == (("Environment", "prod"),)]
    assert len(per_room) == len(rollup) == len(METRICS)
    assert [(d.name, d.value) for d in per_room] == [(d.name, d.value) for d in rollup]


def test_unknown_waits_are_left_out_rather_than_sent_as_zero() -> None:
    datums = room_metric_datums(snapshot(wait_p90_s=None, estimated_wait_s=None), rollup=False)

    assert "WaitP90" not in by_name(datums)
    assert "EstimatedWait" not in by_name(datums)
    assert len(datums) == len(METRICS) - 2


def test_a_datum_is_what_put_metric_data_expects() -> None:
    datum = by_name(room_metric_datums(snapshot(), storage_resolution=1, rollup=False))["Waiting"]

    assert datum.to_api() == {
        "MetricName": "Waiting",
        "Value": 1234.0,
        "Unit": "Count",
        "Timestamp": datetime.fromtimestamp(AT, tz=UTC),
        "StorageResolution": 1,
        "Dimensions": [{"Name": "Room", "Value": "concert"}],
    }


def datum(i: int, room: str = "r") -> MetricDatum:
    return MetricDatum("Waiting", float(i), "Count", AT, (("Room", room),))


@given(count=st.integers(0, 2500), per_call=st.integers(1, MAX_DATUMS_PER_CALL))
def test_batches_keep_every_datum_in_order_and_respect_the_item_limit(count: int, per_call: int) -> None:
    datums = [datum(i) for i in range(count)]

    batches = batch_datums(datums, per_call)

    assert [d for batch in batches for d in batch] == datums
    assert all(1 <= len(batch) <= per_call for batch in batches)
    assert len(batches) == -(-count // per_call)


@given(room_len=st.integers(1, 1024), count=st.integers(1, 1500))
def test_batches_stay_under_a_megabyte_even_with_long_room_names(room_len: int, count: int) -> None:
    datums = [datum(i, "é" * room_len) for i in range(count)]

    for batch in batch_datums(datums):
        assert sum(d.size_estimate() for d in batch) <= MAX_REQUEST_BYTES - 8192


def test_a_query_protocol_request_is_smaller_than_the_size_estimate() -> None:
    from urllib.parse import quote

    d = room_metric_datums(snapshot(room_id="Ünïcode room/1"), {"Environment": "prod"}, rollup=False)[0]
    api = d.to_api()
    prefix = "MetricData.member.1000."
    fields = [
        f"{prefix}MetricName={quote(api['MetricName'])}",
        f"{prefix}Value={api['Value']!r}",
        f"{prefix}Unit={api['Unit']}",
        f"{prefix}Timestamp={quote(api['Timestamp'].isoformat())}",
        f"{prefix}StorageResolution={api['StorageResolution']}",
    ]
    for n, dim in enumerate(api["Dimensions"], 1):
        fields.append(f"{prefix}Dimensions.member.{n}.Name={quote(dim['Name'])}")
        fields.append(f"{prefix}Dimensions.member.{n}.Value={quote(dim['Value'])}")

    assert len("&".join(fields)) <= d.size_estimate()


def breached(**fields: object) -> ThresholdBreached:
    values: dict[str, object] = dict(
        room_id="concert",
        alert_id="concert/estimated_wait_s/1790000000",
        rule="estimated_wait_s",
        value=1850.0,
        threshold=900.0,
        at=AT,
        summary="The line is long: 1234 waiting.",
    )
    values.update(fields)
    return ThresholdBreached(**values)  # type: ignore[arg-type]


def recovered(**fields: object) -> ThresholdRecovered:
    values: dict[str, object] = dict(
        room_id="concert",
        alert_id="concert/estimated_wait_s/1790000000",
        rule="estimated_wait_s",
        value=640.25,
        threshold=900.0,
        at=AT + 312,
        breached_at=AT,
    )
    values.update(fields)
    return ThresholdRecovered(**values)  # type: ignore[arg-type]


def test_a_breach_reads_as_an_alarm_mail_with_the_room_rule_value_and_threshold() -> None:
    n = alert_notification(breached())

    assert n.subject == "[waitroom] ALARM: room concert: estimated_wait_s is 1850 (threshold 900)"
    assert 'Room "concert" crossed a threshold.' in n.text
    assert "Value:      1850" in n.text and "Threshold:  900" in n.text
    assert "Since:      2026-09-21 14:13:20 UTC" in n.text
    assert "The line is long: 1234 waiting." in n.text
    assert n.kind == "breach"


def test_a_recovery_reads_as_an_ok_mail_that_says_how_long_the_breach_lasted() -> None:
    n = alert_notification(recovered())

    assert n.subject == "[waitroom] OK: room concert: estimated_wait_s back to 640.2 (threshold 900)"
    assert "back within its threshold" in n.text
    assert "(after 5 min 12 s)" in n.text
    assert n.kind == "recovery"


def test_a_breach_and_its_recovery_share_the_alert_id_but_not_the_notification_id() -> None:
    breach, recovery = alert_notification(breached()), alert_notification(recovered())

    assert breach.alert_id == recovery.alert_id == "concert/estimated_wait_s/1790000000"
    assert breach.notification_id != recovery.notification_id
    assert alert_notification(breached()).notification_id == breach.notification_id  # stable on a retry


def test_machines_get_the_json_event_and_attributes_while_mail_gets_text() -> None:
    n = alert_notification(breached())

    bodies = json.loads(n.sns_message())
    assert bodies["default"] == bodies["email"] == n.text
    for protocol in ("sqs", "lambda", "https", "email-json"):
        event = json.loads(bodies[protocol])
        assert event["type"] == "waitroom.alert.breached.v1"
        assert event["alert_id"] == n.alert_id
        assert event["notification_id"] == n.notification_id
        assert event["value"] == 1850.0 and event["threshold"] == 900.0
    attributes = n.sns_attributes()
    assert attributes["alert_id"] == {"DataType": "String", "StringValue": n.alert_id}
    assert attributes["notification_id"]["StringValue"] == n.notification_id
    assert attributes["kind"]["StringValue"] == "breach"


@given(st.text())
def test_any_text_becomes_a_valid_sns_subject(text: str) -> None:
    subject = sns_subject(text)

    assert 1 <= len(subject) < 100
    assert all(" " <= ch <= "~" for ch in subject)
    assert subject[0] != " "


def test_a_long_room_id_is_cut_to_fit_the_subject_with_an_ellipsis() -> None:
    subject = alert_notification(breached(room_id="r" * 300)).subject

    assert len(subject) == 99 and subject.endswith("...")


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0 s"), (59.6, "1 min 0 s"), (312, "5 min 12 s"), (7300, "2 h 1 min")]
)
def test_durations_read_naturally(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


TOPIC = "arn:aws:sns:eu-west-1:123456789012:waitroom-alerts"


def definitions() -> list[dict[str, object]]:
    return alarm_definitions(
        [AlarmRule("EstimatedWait", 900), AlarmRule("ExpiriesPerMinute", 100, period_s=60, evaluation_periods=2)],
        namespace="Waitroom",
        dimensions={"Environment": "prod"},
        name_prefix="waitroom-prod",
        topic_arn=TOPIC,
    )


def test_alarms_watch_the_rollup_metric_and_notify_the_topic_on_alarm_and_on_recovery() -> None:
    wait, expiries = definitions()

    assert wait["AlarmName"] == "waitroom-prod-EstimatedWait"
    assert wait["MetricName"] == "EstimatedWait" and wait["Namespace"] == "Waitroom"
    assert wait["Dimensions"] == [{"Name": "Environment", "Value": "prod"}]
    assert wait["Threshold"] == 900.0 and wait["ComparisonOperator"] == "GreaterThanThreshold"
    assert wait["Statistic"] == "Maximum" and wait["Unit"] == "Seconds"
    assert wait["AlarmActions"] == wait["OKActions"] == [TOPIC]
    assert expiries["EvaluationPeriods"] == 2


def test_an_alarm_as_cloudwatch_describes_it_does_not_differ_from_its_definition() -> None:
    wanted = definitions()[0]
    described = {
        **wanted,
        "AlarmArn": "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:waitroom-prod-EstimatedWait",
        "StateValue": "OK",
        "AlarmConfigurationUpdatedTimestamp": "2026-01-01T00:00:00Z",
        "Threshold": 900,
    }

    assert not alarm_differs(described, wanted)
    assert alarm_differs({**described, "Threshold": 901.0}, wanted)
    assert alarm_differs({**described, "OKActions": []}, wanted)
    assert alarm_differs(None, wanted)


def test_an_alarm_on_an_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        alarm_definitions([AlarmRule("Nope", 1)], namespace="W", dimensions={}, name_prefix="w", topic_arn=TOPIC)
