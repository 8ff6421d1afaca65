"""An alert as SNS carries it: a subject and a mail for a person, a JSON event and attributes for machines.

No I/O: :class:`waitroom_notifier.sinks.SnsAlerts` publishes what this builds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from waitroom_events.stats import ThresholdBreached, ThresholdRecovered

# SNS: a subject is ASCII, starts with a letter, digit or punctuation, has no line breaks or control
# characters, and is shorter than 100 characters.
MAX_SUBJECT = 99

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
