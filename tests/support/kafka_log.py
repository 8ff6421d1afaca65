"""Read a topic straight from Kafka in tests: what the log really holds, not what an API says."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from waitroom_events.base import Message
from waitroom_events.codec import decode
from waitroom_platform.kafka import partitions_of


async def raw_records(
    bootstrap: str, topic: str, *, committed_only: bool = False, must_exist: bool = False
) -> list[ConsumerRecord[Any, Any]]:
    """Every record of ``topic`` up to its current end, partition by partition (``committed_only``:
    as a ``read_committed`` consumer sees them; an absent topic is empty unless ``must_exist``)."""
    isolation = "read_committed" if committed_only else "read_uncommitted"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic)]
        assert tps or not must_exist, f"topic {topic} does not exist"
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[ConsumerRecord[Any, Any]] = []
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                records.extend((await consumer.getmany(tp, timeout_ms=1000)).get(tp, []))
        return records
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str) -> list[Message]:
    """Every committed message of ``topic`` up to its current end, partition by partition."""
    records = await raw_records(bootstrap, topic, committed_only=True, must_exist=True)
    return [decode(r.value, r.headers) for r in records]
