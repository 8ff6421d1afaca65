"""Consumer lag, measured against a real broker and read through the OpenTelemetry SDK."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from waitroom_events.commands import JoinRequested
from waitroom_events.topics import TopicRegistry
from waitroom_platform.kafka import Publisher, make_consumer, make_producer
from waitroom_platform.metrics import LAG_METRIC, ConsumerLag
from waitroom_platform.settings import KafkaSettings


def _lag_points(reader: InMemoryMetricReader) -> dict[str, int]:
    data = reader.get_metrics_data()
    found: dict[str, int] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == LAG_METRIC:
                    for point in metric.data.data_points:
                        found[str(point.attributes["messaging.destination.partition.id"])] = int(point.value)
    return found


async def test_lag_counts_the_records_a_consumer_has_not_yet_read_and_falls_to_zero(
    kafka_bootstrap: str, topics: TopicRegistry
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topic = topics.commands.name
    producer = make_producer(kafka)
    await producer.start()
    try:
        publisher = Publisher(producer)
        for n in range(5):
            await publisher.publish(
                topic, JoinRequested(room_id="lag", ticket_id=f"t{n}", requested_at=1.0), partition=0
            )
    finally:
        await producer.stop()

    reader = InMemoryMetricReader()
    lag = ConsumerLag(MeterProvider(metric_readers=[reader]).get_meter("test"), interval_s=0.05)
    consumer = make_consumer(kafka, group_id=f"{topic}.lag-test")
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    untrack = lag.track(consumer, "lag-test")
    try:
        await consumer.getmany(tp, timeout_ms=5000, max_records=2)

        async def lag_is(expected: int) -> None:
            while _lag_points(reader).get("0") != expected:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(lag_is(3), timeout=10)
        while sum(len(r) for r in (await consumer.getmany(tp, timeout_ms=500)).values()):
            pass
        await asyncio.wait_for(lag_is(0), timeout=10)
    finally:
        untrack()
        await consumer.stop()
