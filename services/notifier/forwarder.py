"""Kafka -> AWS forwarders: room-stats to CloudWatch, alerts to SNS.

Each forwarder is its own consumer group over one topic, so CloudWatch being slow never holds
back an alert, and SNS being down never holds back metrics. Per partition, records are handled in
offset order and the offset is committed only after AWS accepted what they carried (or a poison
record is on the dead-letter topic): a crash or an AWS outage re-reads, never skips.

* metrics: every snapshot of a fetched batch becomes datums, sent in as few PutMetricData calls as
  the limits allow, then one commit. A replay re-puts some datums, which at worst counts a sample
  twice in that minute; the Maximum the alarms watch is unchanged.
* alerts: one Publish, then one commit, per alert, so a normal restart publishes nothing twice. An
  alert can still be published twice when a commit fails after SNS accepted, or an outage made a
  request time out that SNS did carry out: the ``notification_id`` attribute tells subscribers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol, TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from waitroom_events.base import Message
from waitroom_events.stats import RoomStats, ThresholdBreached, ThresholdRecovered
from waitroom_notifier.alerts import alert_notification
from waitroom_notifier.aws import Backoff, Rejected, call_until_accepted
from waitroom_notifier.metrics import batch_datums, room_metric_datums
from waitroom_notifier.sinks import AlertSink, MetricsSink
from waitroom_platform.consume import ConsumerLoop, Poison
from waitroom_platform.kafka import consume_span, make_consumer, make_producer
from waitroom_platform.metrics import track_consumer_lag
from waitroom_platform.runtime import Component
from waitroom_platform.settings import KafkaSettings

log = structlog.get_logger()

Record: TypeAlias = ConsumerRecord[Any, Any]


class Handler(Protocol):
    name: str

    @property
    def accepts(self) -> tuple[type[Message], ...]: ...

    #: records per commit: 1 for alerts, any number for metrics
    chunk_size: int

    async def deliver(self, messages: Sequence[tuple[Record, Message]]) -> None:
        """Return once AWS accepted everything; raise Rejected if it refuses the content."""


class MetricsHandler:
    name = "metrics"
    accepts = (RoomStats,)

    def __init__(
        self,
        sink: MetricsSink,
        backoff: Backoff,
        *,
        dimensions: dict[str, str],
        rollup: bool,
        storage_resolution: int,
        per_call: int,
        max_records: int,
    ) -> None:
        self._sink = sink
        self._backoff = backoff
        self._dimensions = dimensions
        self._rollup = rollup
        self._resolution = storage_resolution
        self._per_call = per_call
        self.chunk_size = max_records
        self.datums_put = 0
        self.calls = 0

    async def deliver(self, messages: Sequence[tuple[Record, Message]]) -> None:
        datums = []
        for _, stats in messages:
            assert isinstance(stats, RoomStats)
            datums += room_metric_datums(
                stats, self._dimensions, rollup=self._rollup, storage_resolution=self._resolution
            )
        for batch in batch_datums(datums, self._per_call):
            await call_until_accepted(partial(self._sink.put, batch), what="PutMetricData", backoff=self._backoff)
            self.calls += 1
            self.datums_put += len(batch)
        log.debug("metrics_put", snapshots=len(messages), datums=len(datums))


class AlertHandler:
    name = "alerts"
    accepts = (ThresholdBreached, ThresholdRecovered)
    chunk_size = 1

    def __init__(self, sink: AlertSink, backoff: Backoff, source: str) -> None:
        self._sink = sink
        self._backoff = backoff
        self._source = source
        self.published = 0

    async def deliver(self, messages: Sequence[tuple[Record, Message]]) -> None:
        for record, alert in messages:
            assert isinstance(alert, ThresholdBreached | ThresholdRecovered)
            notification = alert_notification(alert, self._source)
            # The SNS call's client span joins the trace of the stats service that raised the alert.
            with consume_span(record, message=alert) as span:
                span.set_attribute("waitroom.notification_id", notification.notification_id)
                message_id = await call_until_accepted(
                    partial(self._sink.publish, notification),
                    what="Publish",
                    backoff=self._backoff,
                    notification_id=notification.notification_id,
                )
            self.published += 1
            log.info(
                "alert_published",
                room_id=alert.room_id,
                rule=alert.rule,
                kind=notification.kind,
                notification_id=notification.notification_id,
                message_id=message_id,
            )


class Forwarder(Component):
    """One pipeline: a consumer group over ``topic`` whose records its handler delivers to AWS."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        group_id: str,
        handler: Handler,
        *,
        max_poll_interval_s: float = 900.0,
    ) -> None:
        self._kafka = kafka
        self.topic = topic
        self.group_id = group_id
        self.handler = handler
        self.name = f"forward:{handler.name}"
        self._max_poll_interval_ms = int(max_poll_interval_s * 1000)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._loop: ConsumerLoop[Message] | None = None
        self._untrack_lag: Callable[[], None] | None = None

    async def start(self) -> None:
        self._consumer = make_consumer(
            self._kafka,
            self.topic,
            group_id=self.group_id,
            max_poll_records=self.handler.chunk_size if self.handler.chunk_size > 1 else 100,
            max_poll_interval_ms=self._max_poll_interval_ms,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            fetch_max_wait_ms=100,
        )
        self._producer = make_producer(self._kafka)
        await self._producer.start()
        await self._consumer.start()
        self._untrack_lag = track_consumer_lag(self._consumer, self.group_id)
        self._loop = ConsumerLoop(
            self._consumer,
            self.handler.accepts,
            self._hand_over,
            producer=self._producer,
            chunk_size=self.handler.chunk_size,
            name=self.name,
        )
        log.info("forwarder_started", pipeline=self.handler.name, topic=self.topic, group=self.group_id)

    async def run(self) -> None:
        assert self._loop is not None
        await self._loop.run()

    async def stop(self) -> None:
        if self._untrack_lag is not None:
            self._untrack_lag()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def _hand_over(self, tp: TopicPartition, messages: Sequence[tuple[Record, Message]]) -> list[Poison]:
        """Deliver a chunk; content AWS refuses goes to the dead letters, the rest is retried inside."""
        try:
            await self.handler.deliver(messages)
        except Rejected as exc:
            return [(record, exc) for record, _ in messages]
        return []
