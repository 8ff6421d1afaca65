"""The topic registry: every topic waitroom uses, its partitions and its configuration.

Names derive from one prefix (a setting). The room topics are co-partitioned: same key (room_id),
same partition count, so partition ``p`` of every room topic holds the same rooms and a sequencer
or reaper that owns ``p`` of its input owns ``p`` of its outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY_MS = 24 * 3600 * 1000
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    #: fixed delay of a delay topic: a record is due at its timestamp plus this.
    delay_s: float | None = None


@dataclass(frozen=True, slots=True)
class TopicRegistry:
    commands: TopicSpec
    room_events: TopicSpec
    heartbeats: TopicSpec
    reaper_delay: TopicSpec
    room_stats: TopicSpec
    alerts: TopicSpec
    #: compacted: the newest snapshot of each partition's rooms (docs/adr/0007); co-partitioned too
    snapshots: TopicSpec

    def primary(self) -> list[TopicSpec]:
        return [
            self.commands,
            self.room_events,
            self.heartbeats,
            self.reaper_delay,
            self.room_stats,
            self.alerts,
        ]

    def all(self) -> list[TopicSpec]:
        """Every topic to create, dead-letter topics and the snapshots topic included."""
        return self.primary() + [dlq_of(spec) for spec in self.primary()] + [self.snapshots]


def dlq_name(topic: str) -> str:
    return topic + DLQ_SUFFIX


def dlq_of(spec: TopicSpec) -> TopicSpec:
    return TopicSpec(dlq_name(spec.name), spec.partitions, {"retention.ms": str(30 * DAY_MS)})


def topic_registry(prefix: str = "waitroom", room_partitions: int = 12) -> TopicRegistry:
    """Build the registry. ``room_partitions`` bounds how many sequencers share the rooms."""
    if room_partitions < 1:
        raise ValueError("room_partitions must be at least 1")
    n = room_partitions
    return TopicRegistry(
        commands=TopicSpec(f"{prefix}.commands", n, {"retention.ms": str(7 * DAY_MS)}),
        # The source of truth: kept for ever, so every state can be rebuilt by replay.
        room_events=TopicSpec(f"{prefix}.room-events", n, {"retention.ms": "-1"}),
        heartbeats=TopicSpec(f"{prefix}.heartbeats", n, {"retention.ms": str(DAY_MS)}),
        reaper_delay=TopicSpec(f"{prefix}.reaper.delay-10s", n, {"retention.ms": str(DAY_MS)}, delay_s=10.0),
        room_stats=TopicSpec(f"{prefix}.room-stats", n, {"retention.ms": str(7 * DAY_MS)}),
        alerts=TopicSpec(f"{prefix}.alerts", n, {"retention.ms": str(30 * DAY_MS)}),
        # Only the newest record of each key matters (a snapshot's manifest and chunks); no dead
        # letters: its one writer per partition is the sequencer, its readers fall back to the log.
        snapshots=TopicSpec(
            f"{prefix}.snapshots",
            n,
            {
                "cleanup.policy": "compact",
                "segment.ms": str(10 * 60 * 1000),
                "segment.bytes": str(64 * 1024 * 1024),
                "min.cleanable.dirty.ratio": "0.5",
                "delete.retention.ms": str(DAY_MS),
            },
        ),
    )
