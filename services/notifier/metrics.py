"""A room snapshot in CloudWatch's shape: metric datums and their PutMetricData batches.

No I/O: :class:`waitroom_notifier.sinks.CloudWatchMetrics` sends what this builds, so the mapping
and the batching are unit-tested without AWS.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from waitroom_events.stats import RoomStats

ROOM_DIMENSION = "Room"

# CloudWatch's PutMetricData limits (API reference, 2023 onwards): 1000 datums and 1 MB a request,
# 30 dimensions a metric, dimension values up to 1024 characters.
MAX_DATUMS_PER_CALL = 1000
MAX_REQUEST_BYTES = 1_000_000
MAX_DIMENSIONS = 30
MAX_DIMENSION_VALUE = 1024

Unit = Literal["Count", "Seconds"]


@dataclass(frozen=True, slots=True)
class MetricDefinition:
    name: str
    unit: Unit
    description: str


#: Every metric the notifier publishes, in the order it publishes them.
METRICS: tuple[MetricDefinition, ...] = (
    MetricDefinition("Active", "Count", "admitted tickets holding a slot"),
    MetricDefinition("Waiting", "Count", "live tickets waiting in line"),
    MetricDefinition("Capacity", "Count", "configured concurrent admissions"),
    MetricDefinition("JoinsPerMinute", "Count", "joins in the last closed minute"),
    MetricDefinition("AdmissionsPerMinute", "Count", "admissions in the last closed minute"),
    MetricDefinition("ExpiriesPerMinute", "Count", "expiries (waiting and admitted) in the last closed minute"),
    MetricDefinition("WaitP90", "Seconds", "90th percentile wait from join to admission, last 5 minutes"),
    MetricDefinition("EstimatedWait", "Seconds", "estimated wait of the last ticket in line"),
)
METRIC_NAMES = frozenset(m.name for m in METRICS)


def _metric_values(stats: RoomStats) -> dict[str, float | None]:
    return {
        "Active": stats.active,
        "Waiting": stats.waiting,
        "Capacity": stats.capacity,
        "JoinsPerMinute": stats.joins_1m,
        "AdmissionsPerMinute": stats.admissions_1m,
        "ExpiriesPerMinute": stats.expiries_waiting_1m + stats.expiries_admitted_1m,
        "WaitP90": stats.wait_p90_s,
        "EstimatedWait": stats.estimated_wait_s,
    }


Dimensions = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class MetricDatum:
    name: str
    value: float
    unit: Unit
    timestamp: float
    dimensions: Dimensions
    storage_resolution: int = 60

    def to_api(self) -> dict[str, Any]:
        """The ``MetricData`` member of a PutMetricData request."""
        return {
            "MetricName": self.name,
            "Value": self.value,
            "Unit": self.unit,
            "Timestamp": datetime.fromtimestamp(self.timestamp, tz=UTC),
            "StorageResolution": self.storage_resolution,
            "Dimensions": [{"Name": name, "Value": value} for name, value in self.dimensions],
        }

    def size_estimate(self) -> int:
        """An upper bound of this datum's bytes in a query-protocol request (the most verbose one).

        Each field costs its member path (``MetricData.member.1000.Dimensions.member.30.Value=`` is
        under 60 bytes) plus its value URL-encoded (at most 3 bytes per UTF-8 byte).
        """
        fields = [self.name, repr(self.value), self.unit, "2026-01-01T00:00:00.000000Z", str(self.storage_resolution)]
        for name, value in self.dimensions:
            fields += [name, value]
        return sum(60 + 3 * len(text.encode()) for text in fields)


def room_metric_datums(
    stats: RoomStats,
    dimensions: Mapping[str, str] = {},
    *,
    rollup: bool = True,
    storage_resolution: int = 60,
) -> list[MetricDatum]:
    """One room's snapshot as datums: each metric with the room as a dimension next to ``dimensions``.

    With ``rollup`` every metric is also sent once without the room dimension. CloudWatch does not
    aggregate across dimension values, so this copy is what an alarm "any room above X" (statistic
    Maximum) and a fleet-wide graph watch. Values that are unknown (``None``) or not finite are left out:
    CloudWatch rejects NaN and infinities, and a missing point is the honest "no data".
    """
    base = tuple((name, value[:MAX_DIMENSION_VALUE]) for name, value in sorted(dimensions.items()))
    per_room = (*base, (ROOM_DIMENSION, stats.room_id[:MAX_DIMENSION_VALUE] or "-"))
    sets = [per_room, base] if rollup else [per_room]
    values = _metric_values(stats)
    datums = []
    for dims in sets:
        for metric in METRICS:
            value = values[metric.name]
            if value is None or not math.isfinite(value):
                continue
            datums.append(MetricDatum(metric.name, float(value), metric.unit, stats.at, dims, storage_resolution))
    return datums


def batch_datums(
    datums: Iterable[MetricDatum],
    max_items: int = MAX_DATUMS_PER_CALL,
    max_bytes: int = MAX_REQUEST_BYTES,
) -> list[list[MetricDatum]]:
    """Split datums, in order, into PutMetricData calls within the item and size limits.

    ``max_bytes`` bounds the datums' estimated size; 8 KiB of it is kept for the request envelope
    (action, version, namespace, signature headers).
    """
    if max_items < 1:
        raise ValueError("max_items must be at least 1")
    budget = max_bytes - 8192
    if budget <= 0:
        raise ValueError("max_bytes leaves no room for datums")
    batches: list[list[MetricDatum]] = []
    current: list[MetricDatum] = []
    size = 0
    for datum in datums:
        cost = datum.size_estimate()
        if current and (len(current) >= max_items or size + cost > budget):
            batches.append(current)
            current, size = [], 0
        current.append(datum)
        size += cost
    if current:
        batches.append(current)
    return batches
