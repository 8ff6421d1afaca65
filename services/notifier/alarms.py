"""The notifier's CloudWatch alarms: PutMetricAlarm parameters from the settings, and when one needs a write.

No I/O: :mod:`waitroom_notifier.provisioning` reads and writes the alarms with what this decides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from waitroom_notifier.alerts import format_number
from waitroom_notifier.metrics import METRICS


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
