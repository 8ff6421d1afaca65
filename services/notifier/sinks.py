"""The two ports the notifier writes to, and their AWS adapters.

A sink call is blocking (boto3) and either returns (AWS accepted), raises :class:`Rejected` (AWS will
never accept this content) or raises anything else (try again later). The forwarders run them
through :func:`call_until_accepted` so the event loop stays free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from waitroom_notifier.alerts import AlertNotification
from waitroom_notifier.metrics import MetricDatum


class MetricsSink(Protocol):
    def put(self, datums: Sequence[MetricDatum]) -> None:
        """Store one batch (within the per-call limits) of datums."""


class AlertSink(Protocol):
    def publish(self, notification: AlertNotification) -> str:
        """Publish one notification; returns the message id."""


class CloudWatchMetrics:
    def __init__(self, client: Any, namespace: str) -> None:
        self._client = client
        self.namespace = namespace

    def put(self, datums: Sequence[MetricDatum]) -> None:
        self._client.put_metric_data(Namespace=self.namespace, MetricData=[d.to_api() for d in datums])


class SnsAlerts:
    def __init__(self, client: Any, topic_arn: str) -> None:
        self._client = client
        self.topic_arn = topic_arn

    def publish(self, notification: AlertNotification) -> str:
        response = self._client.publish(
            TopicArn=self.topic_arn,
            Subject=notification.subject,
            Message=notification.sns_message(),
            MessageStructure="json",
            MessageAttributes=notification.sns_attributes(),
        )
        return str(response["MessageId"])
