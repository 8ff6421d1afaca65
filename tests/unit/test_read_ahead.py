"""The consumer loop's read-ahead (``waitroom_platform.consume.ReadAhead``) on a fake consumer.

aiokafka fetches nothing more from a broker while records it fetched there wait for the
application; a handler that awaits the broker (the sequencer's transaction) would hold back the
records behind its batch. With a read-ahead, records that arrive while a batch is handled are
fetched meanwhile and handed over together as the next batch; a rewound partition's buffered
records are forgotten; fetching pauses at the limit; a fetch error reaches the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from waitroom_events.codec import encode
from waitroom_events.commands import JoinRequested
from waitroom_platform.consume import ConsumerLoop, Poison, ReadAhead, Record

TP = TopicPartition("unit.commands", 0)
OTHER = TopicPartition("unit.commands", 1)


def record(offset: int, tp: TopicPartition = TP) -> Record:
    encoded = encode(JoinRequested(room_id="r", ticket_id=f"t{offset}", requested_at=0.0))
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, b"r", encoded.value, None, 1, 1, encoded.headers)


@dataclass
class ArrivingConsumer:
    """``getmany`` hands over what has ``arrive``d since the last call, waiting up to its timeout."""

    arrived: list[Record] = field(default_factory=list)
    fetches: int = 0
    seeks: list[tuple[TopicPartition, int]] = field(default_factory=list)
    error: Exception | None = None
    _signal: asyncio.Event = field(default_factory=asyncio.Event)

    def arrive(self, *records: Record) -> None:
        self.arrived.extend(records)
        self._signal.set()

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        self.fetches += 1
        if self.error is not None:
            raise self.error
        if not self.arrived:
            self._signal.clear()
            try:
                await asyncio.wait_for(self._signal.wait(), timeout_ms / 1000)
            except TimeoutError:
                return {}
        taken, self.arrived = self.arrived[:max_records], self.arrived[max_records:]
        out: dict[TopicPartition, list[Record]] = {}
        for r in taken:
            out.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        return out

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


class SlowHandlerLoop(ConsumerLoop[JoinRequested]):
    """Each batch's handler waits for ``release`` (a transaction in flight); batches are recorded."""

    def __init__(self, consumer: ArrivingConsumer, read_ahead: int) -> None:
        super().__init__(
            consumer,  # type: ignore[arg-type]
            JoinRequested,
            self._handle,
            commit=False,
            fetch_timeout_ms=50,
            read_ahead=read_ahead,
        )
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.handling = asyncio.Event()

    async def _handle(self, tp: TopicPartition, good: Any) -> list[Poison]:
        self.batches.append([r.offset for r, _ in good])
        self.handling.set()
        await self.release.wait()
        self.release.clear()
        return []


@contextlib.asynccontextmanager
async def running(loop: SlowHandlerLoop) -> AsyncIterator[None]:
    run = asyncio.create_task(loop.run())
    try:
        yield
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


async def until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def test_records_that_arrive_during_a_batch_are_fetched_meanwhile_and_are_the_next_batch() -> None:
    consumer = ArrivingConsumer()
    loop = SlowHandlerLoop(consumer, read_ahead=100)
    async with running(loop):
        consumer.arrive(record(0))
        await until(lambda: loop.batches == [[0]])
        consumer.arrive(record(1))  # while batch 0's handler waits
        consumer.arrive(record(2), record(3))
        # taken from the consumer while the handler still waits: aiokafka's fetcher can fetch again
        await until(lambda: not consumer.arrived)
        assert loop.batches == [[0]]
        loop.release.set()
        await until(lambda: len(loop.batches) == 2)
        loop.release.set()
        assert loop.batches == [[0], [1, 2, 3]]


async def test_without_a_read_ahead_nothing_is_fetched_while_a_batch_is_handled() -> None:
    consumer = ArrivingConsumer()
    loop = SlowHandlerLoop(consumer, read_ahead=0)
    async with running(loop):
        consumer.arrive(record(0))
        await until(lambda: loop.batches == [[0]])
        fetches = consumer.fetches
        consumer.arrive(record(1))
        await asyncio.sleep(0.05)
        assert consumer.fetches == fetches and consumer.arrived  # held back until the batch ends
        loop.release.set()
        await until(lambda: len(loop.batches) == 2)
        loop.release.set()


async def test_a_rewound_partitions_buffered_records_are_dropped_and_others_kept() -> None:
    consumer = ArrivingConsumer()
    ahead = ReadAhead(consumer, limit=100, max_records=10)  # type: ignore[arg-type]
    ahead.start()
    try:
        consumer.arrive(record(5), record(6), record(0, OTHER))
        await until(lambda: ahead._count == 3)
        ahead.drop(TP)  # sought back: the fetcher reads 5 and 6 again from the new position
        taken = await ahead.take(0.05, 10)
        assert {tp: [r.offset for r in rs] for tp, rs in taken.items()} == {OTHER: [0]}
        assert await ahead.take(0.01, 10) == {}
    finally:
        await ahead.stop()


async def test_fetching_pauses_at_the_limit_and_take_hands_over_at_most_max_records_per_partition() -> None:
    consumer = ArrivingConsumer()
    ahead = ReadAhead(consumer, limit=3, max_records=10)  # type: ignore[arg-type]
    ahead.start()
    try:
        consumer.arrive(*(record(i) for i in range(4)))
        await until(lambda: ahead._count == 4)
        fetches = consumer.fetches
        consumer.arrive(record(4))
        await asyncio.sleep(0.05)
        assert consumer.fetches == fetches  # paused: 4 buffered, at least the limit
        first = await ahead.take(0.05, 2)
        assert [r.offset for r in first[TP]] == [0, 1]
        await until(lambda: ahead._count == 3)  # below the limit: fetching went on (record 4)
        rest = await ahead.take(0.05, 10)
        assert [r.offset for r in rest[TP]] == [2, 3, 4]
    finally:
        await ahead.stop()


async def test_a_fetch_error_is_raised_by_the_loop() -> None:
    consumer = ArrivingConsumer(error=RuntimeError("the group refused us"))
    loop = SlowHandlerLoop(consumer, read_ahead=100)
    with pytest.raises(RuntimeError, match="refused"):
        await asyncio.wait_for(loop.run(), 5)
