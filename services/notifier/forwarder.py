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

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from waitroom_events.base import Message
from waitroom_events.codec import DecodeError, decode
from waitroom_events.stats import RoomStats, ThresholdBreached, ThresholdRecovered
from waitroom_notifier.alerts import alert_notification
from waitroom_notifier.aws import Backoff, Rejected, call_until_accepted
from waitroom_notifier.metrics import batch_datums, room_metric_datums
from waitroom_notifier.sinks import AlertSink, MetricsSink
from waitroom_platform.kafka import consume_span, make_consumer, make_producer, send_to_dead_letter
from waitroom_platform.metrics import track_consumer_lag
from waitroom_platform.settings import KafkaSettings

log = structlog.get_logger()

Record: TypeAlias = ConsumerRecord[Any, Any]


@dataclass
class Chunk:
    """Records handled and committed together: ``good`` decoded, ``poison`` with their error."""

    good: list[tuple[Record, Message]] = field(default_factory=list)
    poison: list[tuple[Record, BaseException]] = field(default_factory=list)

    @property
    def last_offset(self) -> int:
        return max(r.offset for r, _ in [*self.good, *self.poison])


class Handler(Protocol):
    name: str
    accepts: tuple[type[Message], ...]
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


class Forwarder:
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
        self._max_poll_interval_ms = int(max_poll_interval_s * 1000)
        self.ready = asyncio.Event()

    async def run(self) -> None:
        consumer = make_consumer(
            self._kafka,
            self.topic,
            group_id=self.group_id,
            max_poll_records=self.handler.chunk_size if self.handler.chunk_size > 1 else 100,
            max_poll_interval_ms=self._max_poll_interval_ms,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            fetch_max_wait_ms=100,
        )
        producer = make_producer(self._kafka)
        await producer.start()
        untrack_lag: Callable[[], None] | None = None
        try:
            await consumer.start()
            untrack_lag = track_consumer_lag(consumer, self.group_id)
            log.info("forwarder_started", pipeline=self.handler.name, topic=self.topic, group=self.group_id)
            self.ready.set()
            while True:
                batches = list((await consumer.getmany(timeout_ms=500)).items())
                for index, (tp, records) in enumerate(batches):
                    if not await self._handle_partition(consumer, producer, tp, records):
                        # A commit failed (the group may have changed): re-read what was not handled.
                        for other, rest in batches[index + 1 :]:
                            _rewind(consumer, other, rest[0].offset)
                        break
        finally:
            if untrack_lag is not None:
                untrack_lag()
            await consumer.stop()
            await producer.stop()

    def _decode(self, record: Record) -> Message | BaseException:
        try:
            message = decode(record.value, record.headers)
        except DecodeError as exc:
            return exc
        if not isinstance(message, self.handler.accepts):
            return DecodeError(f"{message.TYPE} does not belong on {self.topic}")
        return message

    async def _handle_partition(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, tp: TopicPartition, records: list[Record]
    ) -> bool:
        size = self.handler.chunk_size
        for start in range(0, len(records), size):
            chunk = Chunk()
            for record in records[start : start + size]:
                decoded = self._decode(record)
                if isinstance(decoded, BaseException):
                    chunk.poison.append((record, decoded))
                else:
                    chunk.good.append((record, decoded))
            if chunk.good:
                try:
                    await self.handler.deliver(chunk.good)
                except Rejected as exc:
                    chunk.poison.extend((record, exc) for record, _ in chunk.good)
            if chunk.poison:
                deliveries = [await send_to_dead_letter(producer, record, error) for record, error in chunk.poison]
                await asyncio.gather(*deliveries)
            try:
                await consumer.commit({tp: chunk.last_offset + 1})
            except Exception as exc:  # noqa: BLE001 - any commit failure means: re-read, never skip
                log.warning("commit_failed", pipeline=self.handler.name, partition=tp.partition, error=repr(exc))
                _rewind(consumer, tp, records[start].offset)
                return False
        return True


def _rewind(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
    try:
        consumer.seek(tp, offset)
    except Exception:  # noqa: BLE001,S110 - no longer ours: its new owner reads from the committed offset
        pass
