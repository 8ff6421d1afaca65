"""Composition root of the notifier: ``python -m waitroom_notifier``.

Settings and the AWS clients, then the components: provisioning (the SNS topic and, managed, the
alarms exist; retried while AWS is unreachable, and a signal stops it even then) and the two
forwarders: room-stats -> CloudWatch metrics, alerts -> SNS. Nothing is committed that AWS did not
accept.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import structlog

from waitroom_notifier.alerts import AlertNotification
from waitroom_notifier.aws import Backoff, Rejected, call_until_accepted, make_client
from waitroom_notifier.forwarder import AlertHandler, Forwarder, MetricsHandler
from waitroom_notifier.provisioning import Provisioned, TopicNotFound, provision
from waitroom_notifier.settings import NotifierSettings
from waitroom_notifier.sinks import CloudWatchMetrics, SnsAlerts
from waitroom_platform.metrics import expose_numbers
from waitroom_platform.runtime import Component, Misconfigured
from waitroom_platform.service import run_service
from waitroom_platform.telemetry import instrument_botocore

log = structlog.get_logger()


class Provisioning(Component):
    """Finds (or, managed, creates) the SNS topic and the alarms before anything is forwarded."""

    name = "provisioning"

    def __init__(self, settings: NotifierSettings, sns: Any, cloudwatch: Any) -> None:
        self._settings = settings
        self._sns = sns
        self._cloudwatch = cloudwatch
        self.provisioned: Provisioned | None = None

    async def start(self) -> None:
        settings = self._settings
        backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s)
        try:
            provisioned: Provisioned = await call_until_accepted(
                partial(provision, settings, self._sns, self._cloudwatch), what="provision", backoff=backoff
            )
        except (TopicNotFound, Rejected) as exc:
            raise Misconfigured(str(exc)) from exc
        self.provisioned = provisioned
        log.info(
            "notifier_provisioned",
            topic_arn=provisioned.topic_arn,
            managed_alarms=settings.managed_alarms,
            changes=provisioned.changes,
            topic_created=provisioned.topic_created,
            subscription_created=provisioned.subscription_created,
            alarms_created=provisioned.alarms_created,
            alarms_updated=provisioned.alarms_updated,
            alarms_deleted=provisioned.alarms_deleted,
            alarms_unchanged=provisioned.alarms_unchanged,
        )

    @property
    def topic_arn(self) -> str:
        assert self.provisioned is not None, "provisioning starts before the forwarders"
        return self.provisioned.topic_arn


class _LateAlerts:
    """The SNS sink, made once provisioning has found the topic."""

    def __init__(self, sns: Any, provisioning: Provisioning) -> None:
        self._sns = sns
        self._provisioning = provisioning
        self._sink: SnsAlerts | None = None

    def publish(self, notification: AlertNotification) -> str:
        if self._sink is None:
            self._sink = SnsAlerts(self._sns, self._provisioning.topic_arn)
        return self._sink.publish(notification)


def build_forwarders(
    settings: NotifierSettings, sns: Any, cloudwatch: Any, provisioning: Provisioning
) -> list[Forwarder]:
    topics = settings.common.topics()
    backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s)
    forwarders = []
    if settings.metrics_enabled:
        metrics = MetricsHandler(
            CloudWatchMetrics(cloudwatch, settings.namespace),
            backoff,
            dimensions=settings.dimensions,
            rollup=settings.rollup,
            storage_resolution=settings.storage_resolution,
            per_call=settings.metrics_per_call,
            max_records=settings.max_records,
        )
        forwarders.append(
            Forwarder(
                settings.kafka,
                topics.room_stats.name,
                settings.group("metrics"),
                metrics,
                max_poll_interval_s=settings.max_poll_interval_s,
            )
        )
    if settings.alerts_enabled:
        alerts = AlertHandler(_LateAlerts(sns, provisioning), backoff, settings.source)
        forwarders.append(
            Forwarder(
                settings.kafka,
                topics.alerts.name,
                settings.group("alerts"),
                alerts,
                max_poll_interval_s=settings.max_poll_interval_s,
            )
        )
    return forwarders


def build(settings: NotifierSettings) -> list[Component]:
    instrument_botocore()
    sns = make_client("sns", settings)
    cloudwatch = make_client("cloudwatch", settings)
    provisioning = Provisioning(settings, sns, cloudwatch)
    forwarders = build_forwarders(settings, sns, cloudwatch, provisioning)
    expose_numbers("waitroom_notifier", lambda: delivery_numbers(forwarders), "what AWS accepted since start")
    return [provisioning, *forwarders]


def delivery_numbers(forwarders: list[Forwarder]) -> dict[str, float]:
    numbers: dict[str, float] = {}
    for forwarder in forwarders:
        handler = forwarder.handler
        if isinstance(handler, MetricsHandler):
            numbers.update(metric_datums_put=handler.datums_put, put_metric_data_calls=handler.calls)
        elif isinstance(handler, AlertHandler):
            numbers["alerts_published"] = handler.published
    return numbers


def main() -> None:
    run_service("notifier", NotifierSettings, build)


if __name__ == "__main__":
    main()
