"""Topic administration: create the registry's topics on any cluster, idempotently.

The reaper and stats (their first component, :class:`EnsureTopics`), the chart's hook Job
(``python -m waitroom_platform.topics_cli``), the dev command and the tests call ``ensure_topics``,
so several may race to create the same topics: that is fine. What is not fine is an existing topic
with fewer partitions than the registry asks for: the room topics are co-partitioned (partition
``p`` of each holds the same rooms), so a mismatch would silently send a room's events to a
partition its owner never reads. We refuse to start instead, and never alter an existing topic
ourselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from waitroom_events.topics import TopicSpec
from waitroom_platform.kafka import partitions_of
from waitroom_platform.runtime import Component
from waitroom_platform.settings import KafkaSettings

log = structlog.get_logger(__name__)

#: More replicas than this buys no safety worth its cost for waitroom's topics.
MAX_REPLICATION_FACTOR = 3
_NO_LEADER = -1


class TopicPartitionMismatch(RuntimeError):
    """An existing topic has fewer partitions than the registry requires."""


async def wait_for_broker(bootstrap_servers: str, timeout_s: float = 30.0, **client_options: Any) -> int:
    """Wait until the cluster answers a metadata request; return how many brokers it has.

    Used before anything else talks to a cluster we did not start (``KAFKA_BOOTSTRAP_SERVERS``, a
    container), so a wrong address fails with one clear error instead of a client retrying quietly.
    ``client_options`` are passed to aiokafka (security settings, client id).
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        admin = _admin_client(bootstrap_servers, client_options, request_timeout_s=max(1.0, min(10.0, timeout_s)))
        try:
            await admin.start()
            brokers = len((await admin.describe_cluster())["brokers"])
            if brokers > 0:
                return brokers
        except (KafkaError, OSError) as error:
            last_error = error
        finally:
            await admin.close()
        await asyncio.sleep(0.2)
    raise TimeoutError(
        f"no Kafka broker answered at {bootstrap_servers} within {timeout_s:.0f} s (last error: {last_error!r})"
    )


async def ensure_topics(
    bootstrap_servers: str,
    specs: Sequence[TopicSpec],
    *,
    timeout_s: float = 60.0,
    **client_options: Any,
) -> None:
    """Create the missing topics of ``specs`` and wait until every partition has a leader.

    Topics are created with the spec's partitions and config, replicated ``min(3, brokers)`` times.
    Existing topics are left as they are; one with fewer partitions than its spec raises
    ``TopicPartitionMismatch``. Returns once metadata shows every partition led, so a producer or
    consumer started next never sees "unknown topic" or "leader not available".
    ``client_options`` are passed to aiokafka (security settings, client id).
    """
    wanted = {spec.name: spec for spec in specs}
    admin = _admin_client(bootstrap_servers, client_options, request_timeout_s=30.0)
    try:
        await admin.start()
        existing = await _partition_counts(admin, list(wanted))
        _check_partitions(wanted, existing)
        missing = [spec for name, spec in wanted.items() if name not in existing]
        if missing:
            brokers = len((await admin.describe_cluster())["brokers"])
            replication = max(1, min(MAX_REPLICATION_FACTOR, brokers))
            await _create(admin, missing, replication)
            # A topic created by someone else in the meantime must pass the same check.
            _check_partitions(wanted, await _partition_counts(admin, [spec.name for spec in missing]))
        await _wait_for_leaders(admin, wanted, timeout_s)
    finally:
        await admin.close()


async def ensure_service_topics(kafka: KafkaSettings, specs: Sequence[TopicSpec], *, timeout_s: float = 60.0) -> None:
    """:func:`ensure_topics` with a service's own connection and security settings."""
    options = kafka.client_kwargs()
    bootstrap = str(options.pop("bootstrap_servers"))
    options.pop("client_id", None)
    await ensure_topics(bootstrap, specs, timeout_s=timeout_s, **options)


async def partition_counts(bootstrap_servers: str, names: Sequence[str], **client_options: Any) -> dict[str, int]:
    """The partition count of each named topic that exists; missing topics are left out."""
    admin = _admin_client(bootstrap_servers, client_options, request_timeout_s=30.0)
    try:
        await admin.start()
        return await _partition_counts(admin, list(names))
    finally:
        await admin.close()


async def uncommitted(bootstrap_servers: str, group: str, topic: str) -> dict[int, int]:
    """Per partition of ``topic`` that holds records: how many ``group`` has not committed (the log
    end offset minus the group's committed offset, or minus 0 when it committed none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers)
    await admin.start()
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(reader, topic)]
        ends = await reader.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group)
        return {
            tp.partition: end - (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0)
            for tp, end in ends.items()
            if end
        }
    finally:
        await reader.stop()
        await admin.close()


def _admin_client(bootstrap_servers: str, options: dict[str, Any], request_timeout_s: float) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(request_timeout_s * 1000),
        **{"client_id": "waitroom-admin", **options},
    )


async def _describe(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, Any]]:
    """Metadata of the named topics that exist.

    Listing first matters: aiokafka's ``describe_topics`` asks the broker to auto-create what it
    names, so describing a missing topic on a cluster with ``auto.create.topics.enable=true`` would
    create it with the broker's default partition count, the very mismatch this module prevents.
    """
    present = sorted(set(names) & set(await admin.list_topics()))
    if not present:
        return {}
    return {topic["topic"]: topic for topic in await admin.describe_topics(present)}


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    return {name: len(topic["partitions"]) for name, topic in (await _describe(admin, names)).items()}


def _check_partitions(wanted: dict[str, TopicSpec], existing: dict[str, int]) -> None:
    """Every existing topic must have exactly the registry's partition count.

    The room topics are co-partitioned by room id: a room's commands, events, heartbeats and checks
    must land in the same partition number. A topic with more or fewer partitions than its twins
    puts a room's records in different partitions, and re-partitioning an existing topic moves
    rooms between partitions under the sequencer's feet, which breaks replay of the log.
    """
    wrong = {name: count for name, count in existing.items() if count != wanted[name].partitions}
    if wrong:
        details = ", ".join(
            f"{name} has {count} (registry: {wanted[name].partitions})" for name, count in sorted(wrong.items())
        )
        raise TopicPartitionMismatch(
            f"existing topics do not have the registry's partition count: {details}. The room topics are "
            "co-partitioned by room, and changing the count of a topic in use moves rooms between partitions. "
            "Set WAITROOM_ROOM_PARTITIONS to the count the topics were created with, or use a new "
            "WAITROOM_TOPIC_PREFIX for a new layout."
        )


async def _create(admin: AIOKafkaAdminClient, specs: list[TopicSpec], replication: int) -> None:
    response = await admin.create_topics(
        [NewTopic(spec.name, spec.partitions, replication, topic_configs=dict(spec.config)) for spec in specs]
    )
    for topic, code, *rest in response.topic_errors:
        if code == 0:
            log.info("topic_created", topic=topic, replication_factor=replication)
        elif code == TopicAlreadyExistsError.errno:
            log.info("topic_created_concurrently", topic=topic)
        else:
            message = rest[0] if rest else None
            raise for_code(code)(f"could not create topic {topic}: {message}")


async def _wait_for_leaders(admin: AIOKafkaAdminClient, wanted: dict[str, TopicSpec], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        described = await _describe(admin, list(wanted))
        not_ready = sorted(name for name in wanted if not _all_led(described.get(name), wanted[name].partitions))
        if not not_ready:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without a leader for every partition after {timeout_s:.0f} s: {not_ready}")
        await asyncio.sleep(0.1)


def _all_led(topic: dict[str, Any] | None, partitions: int) -> bool:
    if topic is None or topic["error_code"] != 0 or len(topic["partitions"]) < partitions:
        return False
    return all(p["error_code"] == 0 and p["leader"] != _NO_LEADER for p in topic["partitions"])


class EnsureTopics(Component):
    """A service's first component: the topics it uses exist, with the log's partition count."""

    name = "topics"

    def __init__(self, kafka: KafkaSettings, specs: Callable[[], Sequence[TopicSpec]]) -> None:
        self._kafka = kafka
        self._specs = specs

    async def start(self) -> None:
        await ensure_service_topics(self._kafka, self._specs())
