"""The reaper's recovery reads on a real broker: one reader, reads to the end one after another.

With a fetch held 500 ms at a partition's end, each later request on the reader's connection
waited for it (the broker answers a connection's requests in order): three reads of an empty
partition took 1.5 s, and twelve partitions took longer than the reaper's group session, so the
group expelled the reaper in the middle of every rebalance (``waitroom_platform.kafka.make_reader``).
"""

from __future__ import annotations

import time

from aiokafka import AIOKafkaProducer, TopicPartition

from waitroom_events.topics import TopicRegistry
from waitroom_platform.consume import Record
from waitroom_platform.settings import KafkaSettings
from waitroom_reaper.recovery import kafka_log_reader

#: a tenth of what one held fetch cost each read before; a recovery of three partitions, nine reads
WITHIN_S = 1.0


async def test_a_recovery_reads_its_three_topics_to_the_end_without_waiting_on_held_fetches(
    kafka_bootstrap: str, topics: TopicRegistry
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topics.room_events.name, b"a record", partition=0)  # read, not decoded
    finally:
        await producer.stop()

    events: list[Record] = []
    ends = []
    started = time.monotonic()
    async with kafka_log_reader(KafkaSettings(bootstrap_servers=kafka_bootstrap)) as reader:
        for partition in range(topics.room_events.partitions):
            # what Recovery.rebuild reads, in its order
            ends.append(await reader.read_to_end(TopicPartition(topics.room_events.name, partition), events.append, 0))
            beats = TopicPartition(topics.heartbeats.name, partition)
            start = await reader.offset_for_time(beats, int(time.time() * 1000) - 60_000)
            await reader.read_to_end(beats, events.append, start)
            await reader.read_to_end(TopicPartition(topics.reaper_delay.name, partition), events.append, 0)
    took = time.monotonic() - started

    assert [r.offset for r in events] == [0] and ends == [1, 0, 0]
    assert took < WITHIN_S, f"nine reads took {took:.2f} s"
