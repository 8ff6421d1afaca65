"""Start-up: find the SNS topic, or with managed alarms make the seed's CloudWatch Alarm -> SNS path.

Managed means: the topic, the operator's e-mail subscription and one alarm per configured metric
threshold exist exactly as the settings say. Every step reads first and writes only a difference,
so a restart with the same settings makes no write at all (alarm configuration timestamps stay put)
and a changed threshold is one PutMetricAlarm. Alarms under the prefix that the settings no longer
name are deleted: the prefix marks the alarms this notifier owns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog

from waitroom_notifier.alarms import alarm_definitions, alarm_differs
from waitroom_notifier.settings import NotifierSettings

log = structlog.get_logger()


class TopicNotFound(RuntimeError):
    pass


@dataclass
class Provisioned:
    topic_arn: str
    topic_created: bool = False
    subscription_created: bool = False
    alarms_created: list[str] = field(default_factory=list)
    alarms_updated: list[str] = field(default_factory=list)
    alarms_deleted: list[str] = field(default_factory=list)
    alarms_unchanged: list[str] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return (
            int(self.topic_created)
            + int(self.subscription_created)
            + len(self.alarms_created)
            + len(self.alarms_updated)
            + len(self.alarms_deleted)
        )


def find_topic(sns: Any, name: str) -> str | None:
    for page in sns.get_paginator("list_topics").paginate():
        for topic in page.get("Topics", []):
            arn = str(topic["TopicArn"])
            if arn.rsplit(":", 1)[-1] == name:
                return arn
    return None


def ensure_subscription(sns: Any, topic_arn: str, email: str) -> bool:
    """Subscribe ``email`` unless it already is (confirmed or pending). True if it subscribed now."""
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
        for sub in page.get("Subscriptions", []):
            if sub.get("Protocol") == "email" and str(sub.get("Endpoint", "")).lower() == email.lower():
                return False
    sns.subscribe(TopicArn=topic_arn, Protocol="email", Endpoint=email, ReturnSubscriptionArn=True)
    return True


def ensure_alarms(cloudwatch: Any, definitions: list[dict[str, Any]], prefix: str, result: Provisioned) -> None:
    existing: dict[str, dict[str, Any]] = {}
    paginator = cloudwatch.get_paginator("describe_alarms")
    for page in paginator.paginate(AlarmNamePrefix=f"{prefix}-", AlarmTypes=["MetricAlarm"]):
        for alarm in page.get("MetricAlarms", []):
            existing[alarm["AlarmName"]] = alarm
    wanted = {d["AlarmName"] for d in definitions}
    for definition in definitions:
        name = definition["AlarmName"]
        current = existing.get(name)
        if not alarm_differs(current, definition):
            result.alarms_unchanged.append(name)
            continue
        cloudwatch.put_metric_alarm(**definition)
        (result.alarms_updated if current is not None else result.alarms_created).append(name)
    stale = sorted(set(existing) - wanted)
    if stale:
        cloudwatch.delete_alarms(AlarmNames=stale)
        result.alarms_deleted.extend(stale)


def provision(settings: NotifierSettings, sns: Any, cloudwatch: Any) -> Provisioned:
    """Blocking; idempotent, so the caller may simply run it again after any failure."""
    if not settings.managed_alarms and not settings.alerts_enabled:
        return Provisioned(topic_arn="")  # metrics only: SNS is not used at all
    topic_arn = settings.sns_topic_arn or find_topic(sns, settings.sns_topic_name)
    result = Provisioned(topic_arn=topic_arn or "")
    if not settings.managed_alarms:
        if topic_arn is None:
            raise TopicNotFound(
                f"SNS topic {settings.sns_topic_name!r} not found; create it, set "
                "WAITROOM_NOTIFIER_SNS_TOPIC_ARN, or set WAITROOM_NOTIFIER_MANAGED_ALARMS=true"
            )
        return result
    if topic_arn is None:
        topic_arn = str(sns.create_topic(Name=settings.sns_topic_name)["TopicArn"])
        result.topic_arn = topic_arn
        result.topic_created = True
    if settings.operator_email:
        result.subscription_created = ensure_subscription(sns, topic_arn, settings.operator_email)
    definitions = alarm_definitions(
        settings.alarm_rules(),
        namespace=settings.namespace,
        dimensions=settings.dimensions,
        name_prefix=settings.alarm_prefix,
        topic_arn=topic_arn,
    )
    ensure_alarms(cloudwatch, definitions, settings.alarm_prefix, result)
    return result
