"""The delayed consumer against a real broker: due times, pausing, commits, and an idle wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaProducer
from support.waiting import eventually

from waitroom_events.topics import TopicRegistry
from waitroom_platform.delayed import DelayedConsumer, Record, due_at
from waitroom_platform.settings import KafkaSettings

pytestmark = pytest.mark.asyncio(loop_scope="session")

DELAY_S = 1.5


class Recorder:
    """A handler that notes what it was handed and when; it can be told to fail at one value."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        self.handled: list[tuple[Record, float]] = []
        self.fail_on = fail_on

    async def __call__(self, partition: int, records: Sequence[Record]) -> None:
        for record in records:
            if record.value == self.fail_on:
                raise RuntimeError("handler failed")
            self.handled.append((record, time.time()))

    def values(self) -> list[bytes]:
        return [record.value for record, _ in self.handled]


async def produce(bootstrap: str, topic: str, records: list[tuple[int, bytes, float]]) -> None:
    """(partition, value, timestamp in seconds) each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition, value, ts in records:
            await producer.send_and_wait(topic, value, partition=partition, timestamp_ms=int(ts * 1000))
    finally:
        await producer.stop()


@asynccontextmanager
async def running(
    bootstrap: str, topic: str, handler: Recorder, group: str, **options: float
) -> AsyncIterator[tuple[DelayedConsumer, asyncio.Task[None]]]:
    consumer = DelayedConsumer(
        KafkaSettings(bootstrap_servers=bootstrap), topic, DELAY_S, handler, group_id=group, **options
    )
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer, task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(condition, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    await eventually(condition, timeout, interval=0.01)


async def test_each_record_is_handed_over_once_its_timestamp_plus_the_delay_has_passed_and_not_before(
    topics: TopicRegistry, kafka_bootstrap: str
) -> None:
    topic = topics.reaper_delay.name
    handler = Recorder()

    async with running(kafka_bootstrap, topic, handler, f"g-{uuid4().hex}") as (consumer, _):
        # written once the consumer owns its partitions: the lateness measured is the consumer's,
        # not that of a group's first join on a new broker (seconds on a loaded machine)
        await asyncio.wait_for(consumer.ready.wait(), 30)
        now = time.time()
        records = [(p, f"r{p}-{i}".encode(), now + i * 0.25) for p in range(3) for i in range(4)]
        await produce(kafka_bootstrap, topic, records)
        await until(lambda: len(handler.handled) == len(records))

    for record, handled_at in handler.handled:
        due = due_at(record, DELAY_S)
        assert due <= handled_at <= due + 0.3, (record.value, handled_at - due)
    for p in range(3):
        assert [r.offset for r, _ in handler.handled if r.partition == p] == [0, 1, 2, 3]


async def test_a_partition_whose_head_is_not_due_does_not_hold_up_another_partition(
    topics: TopicRegistry, kafka_bootstrap: str
) -> None:
    topic = topics.reaper_delay.name
    now = time.time()
    await produce(kafka_bootstrap, topic, [(0, b"late", now + 5), (1, b"due", now - DELAY_S)])
    handler = Recorder()

    async with running(kafka_bootstrap, topic, handler, f"g-{uuid4().hex}") as (consumer, _):
        await until(lambda: handler.values() == [b"due"], timeout=10)
        handed_at = time.time()
        assert handed_at < now + 5 + DELAY_S - 1, "the due record waited for the other partition"
        await until(lambda: handler.values() == [b"due", b"late"], timeout=15)


async def test_waiting_for_a_record_that_is_not_due_costs_next_to_no_cpu(
    topics: TopicRegistry, kafka_bootstrap: str
) -> None:
    topic = topics.reaper_delay.name
    now = time.time()
    await produce(kafka_bootstrap, topic, [(0, b"later", now + 2.5)])
    handler = Recorder()

    async with running(kafka_bootstrap, topic, handler, f"g-{uuid4().hex}") as (consumer, _):
        await consumer.ready.wait()
        # the measured window starts once the record is fetched and its partition paused
        await eventually(lambda: consumer.held == [0], 10, "partition 0 held by its undue head", interval=0.01)
        cpu_before, wall_before = time.process_time(), time.monotonic()
        await until(lambda: handler.values() == [b"later"], timeout=15)
        cpu, wall = time.process_time() - cpu_before, time.monotonic() - wall_before

    assert wall > 2.0
    assert cpu / wall < 0.1, f"{cpu:.2f} s of CPU in {wall:.2f} s of waiting"


async def test_only_handled_records_are_committed_so_a_failed_handler_gets_the_rest_again_after_a_restart(
    topics: TopicRegistry, kafka_bootstrap: str
) -> None:
    topic = topics.reaper_delay.name
    now = time.time()
    # r0-r2 are due at once and handled in one round; r3-r5 fall due later, in a round that fails.
    stamps = [now - DELAY_S - 1] * 3 + [now] * 3
    await produce(kafka_bootstrap, topic, [(0, f"r{i}".encode(), ts) for i, ts in enumerate(stamps)])
    group = f"g-{uuid4().hex}"
    failing = Recorder(fail_on=b"r3")

    async with running(kafka_bootstrap, topic, failing, group) as (_, task):
        with pytest.raises(RuntimeError, match="handler failed"):
            await asyncio.wait_for(asyncio.shield(task), timeout=15)

    assert failing.values() == [b"r0", b"r1", b"r2"]
    again = Recorder()
    async with running(kafka_bootstrap, topic, again, group):
        await until(lambda: len(again.handled) >= 3)
    assert again.values() == [b"r3", b"r4", b"r5"]


class SlowListener:
    """Prepares each assigned partition slowly, as the reaper does while it replays the log."""

    def __init__(self, handler: Recorder) -> None:
        self.handler = handler
        self.prepared: set[int] = set()

    async def on_assigned(self, partitions: list[int]) -> None:
        for partition in partitions:
            await asyncio.sleep(0.5)
            assert not [r for r, _ in self.handler.handled if r.partition == partition], "handed over too early"
            self.prepared.add(partition)

    async def on_revoked(self, partitions: list[int]) -> None:
        self.prepared.difference_update(partitions)


async def test_records_fetched_while_the_listener_prepares_a_partition_are_kept_and_handed_over_after_it(
    topics: TopicRegistry, kafka_bootstrap: str
) -> None:
    topic = topics.reaper_delay.name
    past = time.time() - DELAY_S - 1
    await produce(kafka_bootstrap, topic, [(p, f"p{p}".encode(), past) for p in range(3)])
    handler = Recorder()
    listener = SlowListener(handler)
    consumer = DelayedConsumer(
        KafkaSettings(bootstrap_servers=kafka_bootstrap),
        topic,
        DELAY_S,
        handler,
        group_id=f"g-{uuid4().hex}",
        listener=listener,
    )
    task = asyncio.create_task(consumer.run())
    try:
        await until(lambda: len(handler.handled) == 3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert sorted(handler.values()) == [b"p0", b"p1", b"p2"]
    assert listener.prepared == {0, 1, 2}


async def test_a_record_stamped_far_in_the_future_does_not_block_its_partition(
    topics: TopicRegistry, kafka_bootstrap: str
) -> None:
    topic = topics.reaper_delay.name
    now = time.time()
    await produce(kafka_bootstrap, topic, [(2, b"skewed", now + 3600), (2, b"normal", now - DELAY_S)])
    handler = Recorder()

    async with running(kafka_bootstrap, topic, handler, f"g-{uuid4().hex}", max_future_s=60.0):
        await until(lambda: handler.values() == [b"skewed", b"normal"], timeout=10)


class CountingListener:
    """Prepares each partition for ``prepare_s``; notes every assignment and revocation it is told of."""

    def __init__(self, handler: Recorder, prepare_s: float, fail_on: int | None = None) -> None:
        self.handler = handler
        self.prepare_s = prepare_s
        self.fail_on = fail_on
        self.assigned: list[int] = []
        self.revoked: list[int] = []
        self.prepared: set[int] = set()

    async def on_assigned(self, partitions: list[int]) -> None:
        for partition in partitions:
            self.assigned.append(partition)
            await asyncio.sleep(self.prepare_s)
            if partition == self.fail_on:
                raise RuntimeError(f"could not rebuild partition {partition}")
            assert not [r for r, _ in self.handler.handled if r.partition == partition], "handed over too early"
            self.prepared.add(partition)

    async def on_revoked(self, partitions: list[int]) -> None:
        self.revoked.extend(partitions)
        self.prepared.difference_update(partitions)


async def test_a_preparation_longer_than_the_session_keeps_the_partitions_and_is_done_once(
    topics: TopicRegistry, kafka_bootstrap: str
) -> None:
    """A reaper rebuilding partitions of many live tickets takes longer than its session. Run in the
    group's callback, the rebuild went unheard by the group: the member was expelled, assigned the
    same partitions again and rebuilt them again, for as long as a rebuild outlasted the session."""
    topic = topics.reaper_delay.name
    past = time.time() - DELAY_S - 1
    await produce(kafka_bootstrap, topic, [(p, f"p{p}".encode(), past) for p in range(3)])
    handler = Recorder()
    listener = CountingListener(handler, prepare_s=1.0)  # 3 s in all, twice the session
    consumer = DelayedConsumer(
        KafkaSettings(bootstrap_servers=kafka_bootstrap),
        topic,
        DELAY_S,
        handler,
        group_id=f"g-{uuid4().hex}",
        listener=listener,
        session_timeout_ms=1_500,
        heartbeat_interval_ms=250,
    )
    task = asyncio.create_task(consumer.run())
    try:
        await until(lambda: len(handler.handled) == 3)
        await asyncio.wait_for(consumer.ready.wait(), 5)
        assert not task.done()
        # a session past the end of the preparation: an expelled member would have been told by now
        await asyncio.sleep(2.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert listener.assigned == [0, 1, 2], "the partitions were assigned, and prepared, more than once"
    assert listener.revoked == [], "the group took the partitions away during the preparation"
    assert sorted(handler.values()) == [b"p0", b"p1", b"p2"]


async def test_a_listener_that_fails_to_prepare_a_partition_stops_the_consumer_with_its_error(
    topics: TopicRegistry, kafka_bootstrap: str
) -> None:
    topic = topics.reaper_delay.name
    past = time.time() - DELAY_S - 1
    await produce(kafka_bootstrap, topic, [(p, f"p{p}".encode(), past) for p in range(3)])
    handler = Recorder()
    listener = CountingListener(handler, prepare_s=0.1, fail_on=1)
    consumer = DelayedConsumer(
        KafkaSettings(bootstrap_servers=kafka_bootstrap),
        topic,
        DELAY_S,
        handler,
        group_id=f"g-{uuid4().hex}",
        listener=listener,
    )
    task = asyncio.create_task(consumer.run())
    with pytest.raises(RuntimeError, match="could not rebuild partition 1"):
        await asyncio.wait_for(task, timeout=20)

    # what was not prepared was never handed over, and nothing was judged after the failure
    assert all(record.partition == 0 for record, _ in handler.handled)
    assert not consumer.ready.is_set()
