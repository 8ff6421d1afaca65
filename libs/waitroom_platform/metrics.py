"""OpenTelemetry gauges the services share: consumer lag, and queue depth per room.

Request rate and latency need nothing here: the FastAPI instrumentation records the
``http.server.duration`` histogram (its count is the request rate).

Observable gauges are read by the SDK's metric reader, on its own thread, at each export. They
must not touch an event loop's objects from there, so:

* **consumer lag** is sampled on the consumer's loop every few seconds (aiokafka's ``position()``
  is a coroutine) and the gauge reports the last sample;
* **queue depth** reads plain integers off the read model's rooms, copying the dict first.

Only the OpenTelemetry API is used: without ``setup_telemetry`` nothing is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from aiokafka import TopicPartition
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from prometheus_client import REGISTRY, CollectorRegistry, Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = structlog.get_logger()

LAG_METRIC = "waitroom.kafka.consumer.lag"
ROOM_WAITING_METRIC = "waitroom.room.waiting"
ROOM_ACTIVE_METRIC = "waitroom.room.active"


class LagSource(Protocol):
    """What lag is read from: an aiokafka consumer (or a fake of one)."""

    def assignment(self) -> Any: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...

    async def position(self, partition: TopicPartition) -> int: ...


def partition_lag(highwater: int | None, position: int | None) -> int | None:
    """Records in the partition not yet consumed; None while either end is unknown."""
    if highwater is None or position is None:
        return None
    return max(0, highwater - position)


@dataclass
class _Tracked:
    consumer: LagSource
    group: str
    readings: dict[TopicPartition, int] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


class ConsumerLag:
    """The ``waitroom.kafka.consumer.lag`` gauge, one series per group, topic and partition."""

    def __init__(self, meter: Meter | None = None, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self._tracked: dict[int, _Tracked] = {}
        (meter or metrics.get_meter("waitroom.kafka")).create_observable_gauge(
            LAG_METRIC,
            callbacks=[self._observe],
            unit="{message}",
            description="Records in a partition not yet consumed: high watermark minus the consumer's position",
        )

    def track(self, consumer: LagSource, group: str) -> Callable[[], None]:
        """Sample ``consumer`` (on the running loop) until the returned function is called."""
        entry = _Tracked(consumer, group)
        entry.task = asyncio.get_running_loop().create_task(self._sample_forever(entry), name=f"lag-{group}")
        key = id(entry)
        self._tracked[key] = entry

        def untrack() -> None:
            self._tracked.pop(key, None)
            if entry.task is not None:
                entry.task.cancel()

        return untrack

    async def sample(self, entry: _Tracked) -> None:
        readings: dict[TopicPartition, int] = {}
        for tp in list(entry.consumer.assignment()):
            try:
                position = await asyncio.wait_for(entry.consumer.position(tp), timeout=self.interval_s)
            except Exception:  # noqa: BLE001, S112 - revoked, or no position yet: no reading this time
                continue
            lag = partition_lag(entry.consumer.highwater(tp), position)
            if lag is not None:
                readings[tp] = lag
        entry.readings = readings

    async def _sample_forever(self, entry: _Tracked) -> None:
        while True:
            try:
                await self.sample(entry)
            except Exception as exc:  # noqa: BLE001 - a metric must never stop a consumer
                log.warning("consumer_lag_sample_failed", group=entry.group, error=repr(exc))
            await asyncio.sleep(self.interval_s)

    def observations(self) -> Iterator[Observation]:
        for entry in list(self._tracked.values()):
            for tp, lag in list(entry.readings.items()):
                yield Observation(
                    lag,
                    {
                        "messaging.system": "kafka",
                        "messaging.consumer.group.name": entry.group,
                        "messaging.destination.name": tp.topic,
                        "messaging.destination.partition.id": str(tp.partition),
                    },
                )

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return list(self.observations())


@functools.cache
def consumer_lag() -> ConsumerLag:
    """The process's lag gauge, made at first use (after ``setup_telemetry``, never at import)."""
    return ConsumerLag()


def track_consumer_lag(consumer: LagSource, group: str) -> Callable[[], None]:
    """Report ``consumer``'s lag per partition; call the returned function when it stops."""
    return consumer_lag().track(consumer, group)


#: (room id, waiting, active) for every room
RoomDepths = Callable[[], Iterable[tuple[str, int, int]]]


def register_room_gauges(depths: RoomDepths, meter: Meter | None = None) -> None:
    """``waitroom.room.waiting`` and ``waitroom.room.active`` per room, read at each export."""
    meter = meter or metrics.get_meter("waitroom.rooms")

    def waiting(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(w, {"waitroom.room_id": room}) for room, w, _ in _safely(depths)]

    def active(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(a, {"waitroom.room_id": room}) for room, _, a in _safely(depths)]

    meter.create_observable_gauge(
        ROOM_WAITING_METRIC, callbacks=[waiting], unit="{ticket}", description="Tickets waiting in the room's queue"
    )
    meter.create_observable_gauge(
        ROOM_ACTIVE_METRIC, callbacks=[active], unit="{ticket}", description="Tickets admitted and still active"
    )


def _safely(depths: RoomDepths) -> list[tuple[str, int, int]]:
    # Read on the exporter's thread while the loop may be adding a room: a rare "dictionary changed
    # size" costs one export of these gauges, never the exporter.
    with contextlib.suppress(RuntimeError):
        return list(depths())
    return []


class ServiceNumbers(Collector):
    """A service's own numbers on ``/metrics``: ``<prefix>_<name>`` per value, read at each scrape."""

    def __init__(self, prefix: str, read: Callable[[], Mapping[str, float]], description: str) -> None:
        self._prefix = prefix
        self._read = read
        self._description = description

    def collect(self) -> Iterator[Metric]:
        for name, value in sorted(self._read().items()):
            yield GaugeMetricFamily(f"{self._prefix}_{name}", f"{self._description}: {name}", value=float(value))


def expose_numbers(
    prefix: str, read: Callable[[], Mapping[str, float]], description: str, registry: CollectorRegistry = REGISTRY
) -> Callable[[], None]:
    """Publish ``read()``'s numbers on the health port's ``/metrics``; call the result to withdraw them."""
    collector = ServiceNumbers(prefix, read, description)
    registry.register(collector)
    return lambda: registry.unregister(collector)
