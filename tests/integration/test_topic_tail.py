"""TopicTail's ``since_s`` on a real broker: it starts at the records of the last ``since_s`` seconds
(by record timestamp) and is caught up once it has read up to where the topic ended at its start."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from structlog.testing import capture_logs
from support.waiting import eventually

from waitroom_events.codec import encode
from waitroom_events.stats import ThresholdBreached
from waitroom_events.topics import TopicRegistry
from waitroom_platform.consume import Record
from waitroom_platform.settings import KafkaSettings
from waitroom_platform.tail import TopicTail


def alert(room_id: str, alert_id: str) -> ThresholdBreached:
    return ThresholdBreached(room_id=room_id, alert_id=alert_id, rule="waiting_high", value=9, threshold=4, at=1.0)


async def test_a_tail_since_an_hour_reads_the_last_hours_records_and_what_follows_but_nothing_older(
    kafka_bootstrap: str, topics: TopicRegistry
) -> None:
    topic = topics.alerts.name
    now_ms = int(time.time() * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        # Rooms over several partitions; one of them (r2) has only old records.
        for room, alert_id, age_s in [("r1", "old", 7200), ("r1", "recent", 600), ("r2", "old2", 5400)]:
            record = encode(alert(room, alert_id))
            await producer.send_and_wait(
                topic, record.value, key=record.key, headers=record.headers, timestamp_ms=now_ms - age_s * 1000
            )
        seen: list[str] = []

        def collect(records: Sequence[tuple[Record, ThresholdBreached]]) -> None:
            seen.extend(message.alert_id for _, message in records)

        tail: TopicTail[ThresholdBreached] = TopicTail(
            KafkaSettings(bootstrap_servers=kafka_bootstrap), topic, ThresholdBreached, collect, since_s=3600
        )
        await tail.start()
        running = asyncio.create_task(tail.run())
        try:
            await asyncio.wait_for(tail.caught_up.wait(), 30)
            assert seen == ["recent"]
            record = encode(alert("r2", "new"))
            await producer.send_and_wait(topic, record.value, key=record.key, headers=record.headers)
            await eventually(lambda: seen == ["recent", "new"], 15, "the new record", seen=lambda: seen)
        finally:
            running.cancel()
            await tail.stop()
    finally:
        await producer.stop()


async def test_records_the_view_already_holds_are_not_decoded_or_handed_over_again(
    kafka_bootstrap: str, topics: TopicRegistry
) -> None:
    """A read model given records by its own process's sequencer (``held_through``) is handed only
    what follows them; a record in the held range would not decode, and no error is logged for it."""
    topic = topics.alerts.name
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        record = encode(alert("held", "a0"))
        first = await producer.send_and_wait(topic, record.value, key=record.key, headers=record.headers)
        partition = first.partition
        await producer.send_and_wait(topic, b"not an alert", key=record.key, partition=partition)
        held = (await producer.send_and_wait(topic, record.value, key=record.key, partition=partition)).offset
        for alert_id in ("a3", "a4"):
            later = encode(alert("held", alert_id))
            await producer.send_and_wait(topic, later.value, key=later.key, headers=later.headers, partition=partition)
        seen: list[tuple[int, int, str]] = []

        def collect(records: Sequence[tuple[Record, ThresholdBreached]]) -> None:
            seen.extend((r.partition, r.offset, message.alert_id) for r, message in records)

        tail: TopicTail[ThresholdBreached] = TopicTail(
            KafkaSettings(bootstrap_servers=kafka_bootstrap),
            topic,
            ThresholdBreached,
            collect,
            held_through=lambda p: held if p == partition else -1,
        )
        with capture_logs() as logs:
            await tail.start()
            running = asyncio.create_task(tail.run())
            try:
                await asyncio.wait_for(tail.caught_up.wait(), 30)
                mine = [(offset, alert_id) for p, offset, alert_id in seen if p == partition]
                assert mine == [(held + 1, "a3"), (held + 2, "a4")]
            finally:
                running.cancel()
                await tail.stop()
        assert [e for e in logs if e["event"] == "record_skipped"] == [], "the held poison was never decoded"
    finally:
        await producer.stop()
