"""The topic registry: names, co-partitioning, dead-letter twins and the settings that matter."""

from __future__ import annotations

import pytest

from waitroom_events.topics import DLQ_SUFFIX, dlq_name, topic_registry


def test_the_default_registry_names_every_topic_under_the_waitroom_prefix() -> None:
    registry = topic_registry()

    assert [spec.name for spec in registry.primary()] == [
        "waitroom.commands",
        "waitroom.room-events",
        "waitroom.heartbeats",
        "waitroom.reaper.delay-10s",
        "waitroom.room-stats",
        "waitroom.alerts",
    ]


def test_a_prefix_renames_every_topic_dead_letter_topics_included() -> None:
    registry = topic_registry(prefix="staging.wr")

    assert all(spec.name.startswith("staging.wr.") for spec in registry.all())


@pytest.mark.parametrize("partitions", [1, 3, 12, 64])
def test_co_partitioned_room_topics_share_the_partition_count(partitions: int) -> None:
    registry = topic_registry(room_partitions=partitions)

    assert {spec.partitions for spec in registry.primary()} == {partitions}
    assert registry.snapshots.partitions == partitions


def test_every_primary_topic_has_a_dlq_twin_with_the_same_partitions() -> None:
    registry = topic_registry(room_partitions=6)
    by_name = {spec.name: spec for spec in registry.all()}

    for spec in registry.primary():
        twin = by_name[spec.name + DLQ_SUFFIX]
        assert twin.name == dlq_name(spec.name)
        assert twin.partitions == spec.partitions
        assert twin.delay_s is None  # a dead letter waits for a human, not for a timer
    assert len(registry.all()) == 2 * len(registry.primary()) + 1  # the snapshots topic has no dead letters


def test_topic_names_are_unique() -> None:
    names = [spec.name for spec in topic_registry().all()]

    assert len(names) == len(set(names))


def test_room_events_are_retained_for_ever() -> None:
    assert topic_registry().room_events.config["retention.ms"] == "-1"


def test_only_the_room_events_topic_is_retained_for_ever() -> None:
    registry = topic_registry()

    forever = [spec.name for spec in registry.all() if spec.config.get("retention.ms") == "-1"]

    assert forever == [registry.room_events.name]


def test_every_other_topic_has_a_finite_positive_retention() -> None:
    registry = topic_registry()

    for spec in registry.all():
        if spec not in (registry.room_events, registry.snapshots):
            assert int(spec.config["retention.ms"]) > 0, spec.name


def test_the_snapshots_topic_is_compacted_and_never_deletes_by_age() -> None:
    snapshots = topic_registry().snapshots

    assert snapshots.name == "waitroom.snapshots"
    assert snapshots.config["cleanup.policy"] == "compact"
    assert "retention.ms" not in snapshots.config


def test_the_delay_topic_declares_its_10_second_delay() -> None:
    registry = topic_registry()

    assert registry.reaper_delay.delay_s == 10.0
    assert registry.reaper_delay.name.endswith("delay-10s")


def test_no_other_topic_declares_a_delay() -> None:
    registry = topic_registry()

    assert [spec.name for spec in registry.all() if spec.delay_s is not None] == [registry.reaper_delay.name]


@pytest.mark.parametrize("partitions", [0, -1])
def test_an_invalid_partition_count_is_refused(partitions: int) -> None:
    with pytest.raises(ValueError, match="room_partitions"):
        topic_registry(room_partitions=partitions)
