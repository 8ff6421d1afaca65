"""Composition root of the notifier: ``python -m waitroom_notifier``.

Builds settings and the AWS clients, makes sure the SNS topic (and, managed, the alarms) exist,
then runs the two forwarders: room-stats -> CloudWatch metrics, alerts -> SNS. SIGTERM/SIGINT stop
it at any point, even while it waits for AWS; nothing is committed that AWS did not accept.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from functools import partial
from typing import Any, TypeVar

import structlog

from waitroom_notifier.aws import Backoff, Rejected, call_until_accepted, make_client
from waitroom_notifier.forwarder import AlertHandler, Forwarder, MetricsHandler
from waitroom_notifier.provisioning import Provisioned, TopicNotFound, provision
from waitroom_notifier.settings import NotifierSettings
from waitroom_notifier.sinks import CloudWatchMetrics, SnsAlerts
from waitroom_platform.service import load_settings, run_async, service_context
from waitroom_platform.telemetry import instrument_botocore

log = structlog.get_logger()

T = TypeVar("T")


class Stopped(Exception):
    pass


async def until_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` unless ``stop`` is set first (then cancel it and raise :class:`Stopped`)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise Stopped
    return task.result()


def build_forwarders(settings: NotifierSettings, sns: Any, cloudwatch: Any, topic_arn: str) -> list[Forwarder]:
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
                settings.group_id("metrics"),
                metrics,
                max_poll_interval_s=settings.max_poll_interval_s,
            )
        )
    if settings.alerts_enabled:
        alerts = AlertHandler(SnsAlerts(sns, topic_arn), backoff, settings.source)
        forwarders.append(
            Forwarder(
                settings.kafka,
                topics.alerts.name,
                settings.group_id("alerts"),
                alerts,
                max_poll_interval_s=settings.max_poll_interval_s,
            )
        )
    return forwarders


async def run(settings: NotifierSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    sns = make_client("sns", settings)
    cloudwatch = make_client("cloudwatch", settings)
    backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s)
    try:
        provisioned: Provisioned = await until_stopped(
            stop,
            call_until_accepted(partial(provision, settings, sns, cloudwatch), what="provision", backoff=backoff),
        )
    except Stopped:
        log.info("notifier_stopped", during="provisioning")
        return 0
    except (TopicNotFound, Rejected) as exc:
        log.error("notifier_misconfigured", error=str(exc))
        return 2
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

    forwarders = build_forwarders(settings, sns, cloudwatch, provisioned.topic_arn)
    tasks = [asyncio.create_task(f.run(), name=f"forward:{f.handler.name}") for f in forwarders]
    stopper = asyncio.create_task(stop.wait(), name="stop")
    ready = asyncio.gather(*(f.ready.wait() for f in forwarders))
    done, _ = await asyncio.wait([*tasks, stopper, ready], return_when=asyncio.FIRST_COMPLETED)
    if ready in done:
        log.info("notifier_ready", pipelines=[f.handler.name for f in forwarders])
        await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    else:
        ready.cancel()
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    for task in [*tasks, stopper]:
        task.cancel()
    await asyncio.gather(*tasks, stopper, return_exceptions=True)
    if failed:
        log.error("notifier_failed", task=failed[0].get_name(), error=repr(failed[0].exception()))
        return 1
    log.info("notifier_stopped")
    return 0


def main() -> None:
    settings = load_settings(NotifierSettings, "notifier")
    with service_context("notifier", settings.common):
        instrument_botocore()
        code = run_async(run(settings))
    raise SystemExit(code)


if __name__ == "__main__":
    main()
