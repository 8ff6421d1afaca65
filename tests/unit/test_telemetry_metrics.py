"""The shared gauges: consumer lag per partition and queue depth per room."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from waitroom_platform.metrics import (
    LAG_METRIC,
    ROOM_ACTIVE_METRIC,
    ROOM_WAITING_METRIC,
    ConsumerLag,
    _Tracked,
    partition_lag,
    register_room_gauges,
)


class FakeConsumer:
    """Records nothing, answers what the test set: assignment, high watermarks, positions."""

    def __init__(self, highwaters: dict[TopicPartition, int | None], positions: dict[TopicPartition, int]) -> None:
        self.highwaters = highwaters
        self.positions = positions

    def assignment(self) -> set[TopicPartition]:
        return set(self.highwaters)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.highwaters[partition]

    async def position(self, partition: TopicPartition) -> int:
        if partition not in self.positions:
            raise RuntimeError("partition is not assigned")
        return self.positions[partition]


def _points(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    data = reader.get_metrics_data()
    found = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        found[tuple(sorted(point.attributes.items()))] = point.value
    return found


def test_lag_is_the_high_watermark_minus_the_position_and_never_negative() -> None:
    assert partition_lag(10, 7) == 3
    assert partition_lag(10, 10) == 0
    assert partition_lag(5, 7) == 0  # the position ran ahead of a high watermark fetched earlier
    assert partition_lag(None, 7) is None
    assert partition_lag(10, None) is None


async def test_the_lag_gauge_reports_each_assigned_partition_with_topic_partition_and_group() -> None:
    reader = InMemoryMetricReader()
    lag = ConsumerLag(MeterProvider(metric_readers=[reader]).get_meter("test"))
    p0, p1, p2 = (TopicPartition("waitroom.commands", p) for p in range(3))
    consumer = FakeConsumer({p0: 10, p1: None, p2: 4}, {p0: 6, p1: 0})  # p1: no fetch yet; p2: being revoked
    entry = _Tracked(consumer, "waitroom.sequencer")
    lag._tracked[id(entry)] = entry
    await lag.sample(entry)

    points = _points(reader, LAG_METRIC)
    assert points == {
        (
            ("messaging.consumer.group.name", "waitroom.sequencer"),
            ("messaging.destination.name", "waitroom.commands"),
            ("messaging.destination.partition.id", "0"),
            ("messaging.system", "kafka"),
        ): 4
    }


async def test_an_untracked_consumer_is_no_longer_reported() -> None:
    reader = InMemoryMetricReader()
    lag = ConsumerLag(MeterProvider(metric_readers=[reader]).get_meter("test"), interval_s=0.01)
    tp = TopicPartition("t", 0)
    untrack = lag.track(FakeConsumer({tp: 3}, {tp: 1}), "g")
    for _ in range(100):
        if _points(reader, LAG_METRIC):
            break
        await asyncio.sleep(0.01)
    assert list(_points(reader, LAG_METRIC).values()) == [2]
    untrack()
    assert _points(reader, LAG_METRIC) == {}


def test_room_gauges_report_waiting_and_active_per_room() -> None:
    reader = InMemoryMetricReader()
    rooms = {"demo": (7, 5), "sale": (0, 2)}
    register_room_gauges(
        lambda: [(r, w, a) for r, (w, a) in rooms.items()], MeterProvider(metric_readers=[reader]).get_meter("t")
    )
    assert _points(reader, ROOM_WAITING_METRIC) == {
        (("waitroom.room_id", "demo"),): 7,
        (("waitroom.room_id", "sale"),): 0,
    }
    assert _points(reader, ROOM_ACTIVE_METRIC) == {
        (("waitroom.room_id", "demo"),): 5,
        (("waitroom.room_id", "sale"),): 2,
    }


def test_a_room_source_that_changes_while_read_costs_one_reading_not_the_export() -> None:
    reader = InMemoryMetricReader()

    def racing() -> list[tuple[str, int, int]]:
        raise RuntimeError("dictionary changed size during iteration")

    register_room_gauges(racing, MeterProvider(metric_readers=[reader]).get_meter("t"))
    assert _points(reader, ROOM_WAITING_METRIC) == {}
