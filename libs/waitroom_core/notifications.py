"""What the notifier tells AWS, decided without AWS: metric datums, their batches, alert mails, alarms.

Pure: no I/O, no clock, no logging. The notifier's adapters turn these values into boto3 calls;
everything here is data in, data out, so it is unit-tested directly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from waitroom_events.stats import RoomStats, ThresholdBreached, ThresholdRecovered

ROOM_DIMENSION = "Room"

# CloudWatch's PutMetricData limits (API reference, 2023 onwards): 1000 datums and 1 MB a request,
# 30 dimensions a metric, dimension values up to 1024 characters.
MAX_DATUMS_PER_CALL = 1000
MAX_REQUEST_BYTES = 1_000_000
MAX_DIMENSIONS = 30
MAX_DIMENSION_VALUE = 1024

# SNS: a subject is ASCII, starts with a letter, digit or punctuation, has no line breaks or control
# characters, and is shorter than 100 characters.
MAX_SUBJECT = 99

Unit = Literal["Count", "Seconds"]


@dataclass(frozen=True, slots=True)
class MetricDefinition:
    name: str
    unit: Unit
    description: str


#: Every metric the notifier publishes, in the order it publishes them.
METRICS: tuple[MetricDefinition, ...] = (
    MetricDefinition("Active", "Count", "admitted tickets holding a slot"),
    MetricDefinition("Waiting", "Count", "live tickets waiting in line"),
    MetricDefinition("Capacity", "Count", "configured concurrent admissions"),
    MetricDefinition("JoinsPerMinute", "Count", "joins in the last closed minute"),
    MetricDefinition("AdmissionsPerMinute", "Count", "admissions in the last closed minute"),
    MetricDefinition("ExpiriesPerMinute", "Count", "expiries (waiting and admitted) in the last closed minute"),
    MetricDefinition("WaitP90", "Seconds", "90th percentile wait from join to admission, last 5 minutes"),
    MetricDefinition("EstimatedWait", "Seconds", "estimated wait of the last ticket in line"),
)
METRIC_NAMES = frozenset(m.name for m in METRICS)


def _metric_values(stats: RoomStats) -> dict[str, float | None]:
    return {
        "Active": stats.active,
        "Waiting": stats.waiting,
        "Capacity": stats.capacity,
        "JoinsPerMinute": stats.joins_1m,
        "AdmissionsPerMinute": stats.admissions_1m,
        "ExpiriesPerMinute": stats.expiries_waiting_1m + stats.expiries_admitted_1m,
        "WaitP90": stats.wait_p90_s,
        "EstimatedWait": stats.estimated_wait_s,
    }


Dimensions = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class MetricDatum:
    name: str
    value: float
    unit: Unit
    timestamp: float
    dimensions: Dimensions
    storage_resolution: int = 60

    def to_api(self) -> dict[str, Any]:
        """The ``MetricData`` member of a PutMetricData request."""
        return {
            "MetricName": self.name,
            "Value": self.value,
            "Unit": self.unit,
            "Timestamp": datetime.fromtimestamp(self.timestamp, tz=UTC),
            "StorageResolution": self.storage_resolution,
            "Dimensions": [{"Name": name, "Value": value} for name, value in self.dimensions],
        }

    def size_estimate(self) -> int:
        """An upper bound of this datum's bytes in a query-protocol request (the most verbose one).

        Each field costs its member path (``MetricData.member.1000.Dimensions.member.30.Value=`` is
        under 60 bytes) plus its value URL-encoded (at most 3 bytes per UTF-8 byte).
        """
        fields = [self.name, repr(self.value), self.unit, "2026-01-01T00:00:00.000000Z", str(self.storage_resolution)]
        for name, value in self.dimensions:
            fields += [name, value]
        return sum(60 + 3 * len(text.encode()) for text in fields)


def room_metric_datums(
    stats: RoomStats,
    dimensions: Mapping[str, str] = {},
    *,
    rollup: bool = True,
    storage_resolution: int = 60,
) -> list[MetricDatum]:
    """One room's snapshot as datums: each metric with the room as a dimension next to ``dimensions``.

    With ``rollup`` every metric is also sent once without the room dimension. CloudWatch does not
    aggregate across dimension values, so this copy is what an alarm "any room above X" (statistic
    Maximum) and a fleet-wide graph watch. Values that are unknown (``None``) or not finite are left out:
    CloudWatch rejects NaN and infinities, and a missing point is the honest "no data".
    """
    base = tuple((name, value[:MAX_DIMENSION_VALUE]) for name, value in sorted(dimensions.items()))
    per_room = (*base, (ROOM_DIMENSION, stats.room_id[:MAX_DIMENSION_VALUE] or "-"))
    sets = [per_room, base] if rollup else [per_room]
    values = _metric_values(stats)
    datums = []
    for dims in sets:
        for metric in METRICS:
            value = values[metric.name]
            if value is None or not math.isfinite(value):
                continue
            datums.append(MetricDatum(metric.name, float(value), metric.unit, stats.at, dims, storage_resolution))
    return datums


def batch_datums(
    datums: Iterable[MetricDatum],
    max_items: int = MAX_DATUMS_PER_CALL,
    max_bytes: int = MAX_REQUEST_BYTES,
) -> list[list[MetricDatum]]:
    """Split datums, in order, into PutMetricData calls within the item and size limits.

    ``max_bytes`` bounds the datums' estimated size; 8 KiB of it is kept for the request envelope
    (action, version, namespace, signature headers).
    """
    if max_items < 1:
        raise ValueError("max_items must be at least 1")
    budget = max_bytes - 8192
    if budget <= 0:
        raise ValueError("max_bytes leaves no room for datums")
    batches: list[list[MetricDatum]] = []
    current: list[MetricDatum] = []
    size = 0
    for datum in datums:
        cost = datum.size_estimate()
        if current and (len(current) >= max_items or size + cost > budget):
            batches.append(current)
            current, size = [], 0
        current.append(datum)
        size += cost
    if current:
        batches.append(current)
    return batches


# --------------------------------------------------------------------------------------------- alerts

Alert = ThresholdBreached | ThresholdRecovered
AlertKind = Literal["breach", "recovery"]


@dataclass(frozen=True, slots=True)
class AlertNotification:
    """One SNS notification: a subject and text for a person, a JSON event and attributes for machines."""

    notification_id: str
    alert_id: str
    kind: AlertKind
    subject: str
    text: str
    event: dict[str, Any]
    attributes: dict[str, str]

    def sns_message(self) -> str:
        """The ``Message`` for ``MessageStructure="json"``: text for e-mail, the JSON event for machines.

        E-mail (and SMS, push: the ``default``) get the text; ``email-json``, SQS, Lambda, HTTP(S) and
        Firehose subscribers get the event as JSON, so no consumer has to parse prose.
        """
        event_json = json.dumps(self.event, sort_keys=True, separators=(",", ":"))
        bodies = {"default": self.text, "email": self.text}
        for protocol in ("email-json", "sqs", "lambda", "http", "https", "firehose"):
            bodies[protocol] = event_json
        return json.dumps(bodies, sort_keys=True)

    def sns_attributes(self) -> dict[str, dict[str, str]]:
        return {name: {"DataType": "String", "StringValue": value} for name, value in self.attributes.items()}


def notification_id(alert_id: str, kind: AlertKind) -> str:
    """Stable per alert and kind: a breach and its recovery share ``alert_id``, never this id."""
    return f"{alert_id}:{kind}"


def alert_notification(alert: Alert, source: str = "waitroom") -> AlertNotification:
    kind: AlertKind = "breach" if isinstance(alert, ThresholdBreached) else "recovery"
    nid = notification_id(alert.alert_id, kind)
    event = {
        "type": alert.TYPE,
        "kind": kind,
        "notification_id": nid,
        "source": source,
        **alert.to_dict(),
    }
    attributes = {
        "notification_id": nid,
        "alert_id": alert.alert_id,
        "kind": kind,
        "type": alert.TYPE,
        "room_id": alert.room_id,
        "rule": alert.rule,
        "source": source,
    }
    attributes = {name: value for name, value in attributes.items() if value}  # SNS refuses empty values
    return AlertNotification(
        notification_id=nid,
        alert_id=alert.alert_id,
        kind=kind,
        subject=alert_subject(alert, source),
        text=alert_text(alert, source),
        event=event,
        attributes=attributes,
    )


def alert_subject(alert: Alert, source: str = "waitroom") -> str:
    value = format_number(alert.value)
    threshold = format_number(alert.threshold)
    if isinstance(alert, ThresholdBreached):
        text = f"[{source}] ALARM: room {alert.room_id}: {alert.rule} is {value} (threshold {threshold})"
    else:
        text = f"[{source}] OK: room {alert.room_id}: {alert.rule} back to {value} (threshold {threshold})"
    return sns_subject(text)


def alert_text(alert: Alert, source: str = "waitroom") -> str:
    at = format_time(alert.at)
    if isinstance(alert, ThresholdBreached):
        lines = [
            f'Room "{alert.room_id}" crossed a threshold.',
            "",
            f"  Rule:       {alert.rule}",
            f"  Value:      {format_number(alert.value)}",
            f"  Threshold:  {format_number(alert.threshold)}",
            f"  Since:      {at}",
        ]
        closing = "You will get another message with the same alert id when it recovers."
    else:
        lines = [
            f'Room "{alert.room_id}" is back within its threshold.',
            "",
            f"  Rule:       {alert.rule}",
            f"  Value:      {format_number(alert.value)}",
            f"  Threshold:  {format_number(alert.threshold)}",
            f"  Breached:   {format_time(alert.breached_at)}",
            f"  Recovered:  {at} (after {format_duration(alert.at - alert.breached_at)})",
        ]
        closing = "This closes the alert with the same id."
    if alert.summary:
        lines += ["", alert.summary]
    lines += [
        "",
        f"  Alert id:   {alert.alert_id}",
        "",
        closing,
        f"Sent by the {source} notifier. A repeated message with the same alert id and kind is a duplicate.",
    ]
    return "\n".join(lines) + "\n"


def sns_subject(text: str) -> str:
    """``text`` made a valid SNS subject: printable ASCII, one line, at most 99 characters."""
    cleaned = "".join(ch if " " <= ch <= "~" else (" " if ch.isspace() else "?") for ch in text)
    cleaned = " ".join(cleaned.split()) or "waitroom alert"
    if len(cleaned) > MAX_SUBJECT:
        cleaned = cleaned[: MAX_SUBJECT - 3].rstrip() + "..."
    return cleaned


def format_number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def format_time(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


# --------------------------------------------------------------------------------------------- alarms


@dataclass(frozen=True, slots=True)
class AlarmRule:
    metric: str
    threshold: float
    comparison: str = "GreaterThanThreshold"
    statistic: str = "Maximum"
    period_s: int = 60
    evaluation_periods: int = 1


#: The parts of a DescribeAlarms answer that PutMetricAlarm sets; a difference in any means "update".
ALARM_FIELDS = (
    "AlarmName",
    "AlarmDescription",
    "ActionsEnabled",
    "AlarmActions",
    "OKActions",
    "Namespace",
    "MetricName",
    "Dimensions",
    "Statistic",
    "Period",
    "EvaluationPeriods",
    "Threshold",
    "ComparisonOperator",
    "TreatMissingData",
    "Unit",
)


def alarm_name(prefix: str, metric: str) -> str:
    return f"{prefix}-{metric}"


def alarm_definitions(
    rules: Sequence[AlarmRule],
    *,
    namespace: str,
    dimensions: Mapping[str, str],
    name_prefix: str,
    topic_arn: str,
) -> list[dict[str, Any]]:
    """PutMetricAlarm parameters for each rule, on the rollup metrics (every room, without ``Room``).

    The SNS topic is both the alarm and the OK action: the operator hears of the breach and of the
    recovery, as with the alerts the stats service raises. Missing data is not breaching: a quiet
    room, or a notifier that is down, is not an alarm on its own.
    """
    units = {m.name: m.unit for m in METRICS}
    definitions = []
    for rule in rules:
        if rule.metric not in units:
            raise ValueError(f"unknown metric {rule.metric!r}; known: {sorted(units)}")
        definitions.append(
            {
                "AlarmName": alarm_name(name_prefix, rule.metric),
                "AlarmDescription": (
                    f"waitroom: {rule.statistic} of {rule.metric} over {rule.period_s}s "
                    f"{_COMPARISON_WORDS.get(rule.comparison, rule.comparison)} {format_number(rule.threshold)} "
                    f"in any room (managed by the notifier; edits are overwritten at its next start)"
                ),
                "ActionsEnabled": True,
                "AlarmActions": [topic_arn],
                "OKActions": [topic_arn],
                "Namespace": namespace,
                "MetricName": rule.metric,
                "Dimensions": [{"Name": k, "Value": v} for k, v in sorted(dimensions.items())],
                "Statistic": rule.statistic,
                "Period": rule.period_s,
                "EvaluationPeriods": rule.evaluation_periods,
                "Threshold": float(rule.threshold),
                "ComparisonOperator": rule.comparison,
                "TreatMissingData": "notBreaching",
                "Unit": units[rule.metric],
            }
        )
    return definitions


_COMPARISON_WORDS = {
    "GreaterThanThreshold": ">",
    "GreaterThanOrEqualToThreshold": ">=",
    "LessThanThreshold": "<",
    "LessThanOrEqualToThreshold": "<=",
}


def alarm_differs(existing: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Whether an alarm as DescribeAlarms shows it differs from the definition we want."""
    if existing is None:
        return True
    for name in ALARM_FIELDS:
        want = desired.get(name)
        have = existing.get(name)
        if name == "Dimensions":
            want = sorted((d["Name"], d["Value"]) for d in want or [])
            have = sorted((d["Name"], d["Value"]) for d in have or [])
        elif name in ("AlarmActions", "OKActions"):
            want, have = sorted(want or []), sorted(have or [])
        elif name == "Threshold":
            want, have = float(want or 0), float(have if have is not None else math.nan)
        if want != have:
            return True
    return False
