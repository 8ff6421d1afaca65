"""Read a topic straight from Kafka in tests: what the log really holds, not what an API says."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from waitroom_events.base import Message
from waitroom_events.codec import decode
from waitroom_platform.kafka import partitions_of


async def read_topic(bootstrap: str, topic: str) -> list[Message]:
    """Every committed message of ``topic`` up to its current end, partition by partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic)]
        assert tps, f"topic {topic} does not exist"
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        messages: list[Message] = []
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                messages.extend(decode(r.value, r.headers) for r in batch.get(tp, []))
        return messages
    finally:
        await consumer.stop()
