"""Follow every partition of a topic from its beginning (or its end, or a while back), without a consumer group.

Read models use this: every replica sees every room, and replaying from the start rebuilds the
state the log describes (``since_s``: from the records of the last ``since_s`` seconds instead, by
record timestamp, for a view of recent history). ``caught_up`` is set once the tail has read
everything that was committed when it started, which is when a read model can answer
truthfully. It is a runtime component: a tail whose loop fails ends the process (logged once, with
its name), instead of leaving a read model that silently stopped following the log.

Records are decoded by the consumer skeleton into the accepted types; what does not decode is
logged and skipped (the topic's writer owns its dead letters).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from waitroom_platform.consume import Accepts, ConsumerLoop, M, Record
from waitroom_platform.kafka import make_consumer, partitions_of
from waitroom_platform.runtime import Component
from waitroom_platform.settings import KafkaSettings

log = structlog.get_logger()

#: hands over the decoded records of one fetched partition batch
BatchHandler = Callable[[Sequence[tuple[Record, M]]], Awaitable[None] | None]
#: given the topic's partitions, the offset each one starts at (missing: its beginning), e.g.
#: where a snapshot the view loaded leaves off
StartAt = Callable[[list[int]], Awaitable[dict[int, int]]]
#: given a partition, the offset up to which (inclusive) the view already holds its records from
#: elsewhere (-1: none); the tail neither decodes nor hands over those again
HeldThrough = Callable[[int], int]


class TopicTail(Component, Generic[M]):
    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        accepts: Accepts,
        on_batch: BatchHandler[M],
        *,
        from_beginning: bool = True,
        since_s: float | None = None,
        max_records: int = 2000,
        start_at: StartAt | None = None,
        held_through: HeldThrough | None = None,
    ) -> None:
        self._kafka = kafka
        self.topic = topic
        self.name = f"tail:{topic}"
        self._accepts = accepts
        self._on_batch = on_batch
        self._from_beginning = from_beginning
        self._since_s = since_s
        self._max_records = max_records
        self._start_at = start_at
        self._held_through = held_through
        self._consumer: AIOKafkaConsumer | None = None
        self._targets: dict[TopicPartition, int] = {}
        self.caught_up = asyncio.Event()

    async def start(self) -> None:
        consumer = make_consumer(self._kafka, max_partition_fetch_bytes=4 * 1024 * 1024)
        await consumer.start()
        self._consumer = consumer
        partitions = await partitions_of(consumer, self.topic)
        if not partitions:
            raise RuntimeError(f"topic {self.topic!r} does not exist; create the topics first")
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(tps)
        if self._since_s is not None:
            await self._seek_back(consumer, tps, self._since_s)
        elif self._from_beginning:
            starts = {} if self._start_at is None else await self._start_at(partitions)
            await consumer.seek_to_beginning(*[tp for tp in tps if starts.get(tp.partition, 0) <= 0])
            for tp in tps:
                if starts.get(tp.partition, 0) > 0:
                    consumer.seek(tp, starts[tp.partition])
            ends = await consumer.end_offsets(tps)
            self._targets = {tp: off for tp, off in ends.items() if off > max(0, starts.get(tp.partition, 0))}
        else:
            await consumer.seek_to_end(*tps)
        if not self._targets:
            self.caught_up.set()

    async def _seek_back(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition], since_s: float) -> None:
        """Each partition at its first record of the last ``since_s`` seconds (at its end if none)."""
        since_ms = int((time.time() - since_s) * 1000)
        found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            hit = found.get(tp)
            start = ends[tp] if hit is None else hit.offset
            consumer.seek(tp, start)
            if start < ends[tp]:
                self._targets[tp] = ends[tp]

    async def run(self) -> None:
        assert self._consumer is not None
        loop = _TailLoop(self, self._consumer)
        await loop.run()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    def ready(self) -> bool:
        return self.caught_up.is_set()

    def park(self, partition: int) -> None:
        """Stop fetching ``partition``: the view is given its records another way (the read model,
        by its own sequencer) and says when that stops with :meth:`unpark`."""
        if self._consumer is not None:
            self._consumer.pause(TopicPartition(self.topic, partition))

    def unpark(self, partition: int, offset: int) -> None:
        """Fetch ``partition`` again, from ``offset`` (just after what the view holds)."""
        if self._consumer is None:
            return
        tp = TopicPartition(self.topic, partition)
        self._consumer.seek(tp, offset)
        self._consumer.resume(tp)

    async def _hand_over(self, tp: TopicPartition, records: Sequence[tuple[Record, M]]) -> None:
        result = self._on_batch(records)
        if result is not None:
            await result

    async def _check_caught_up(self) -> None:
        assert self._consumer is not None
        for tp, target in list(self._targets.items()):
            if await self._consumer.position(tp) >= target:
                del self._targets[tp]
        if not self._targets:
            log.info("tail_caught_up", topic=self.topic)
            self.caught_up.set()


class _TailLoop(ConsumerLoop[M]):
    def __init__(self, tail: TopicTail[M], consumer: AIOKafkaConsumer) -> None:
        super().__init__(
            consumer, tail._accepts, tail._hand_over, commit=False, max_records=tail._max_records, name=tail.name
        )
        self._tail = tail

    async def process(self, tp: TopicPartition, records: Sequence[Record]) -> bool:
        held = self._tail._held_through
        if held is not None and records[0].offset <= (through := held(tp.partition)):
            records = [record for record in records if record.offset > through]
            if not records:
                return True
        return await super().process(tp, records)

    async def after_fetch(self, batches: Sequence[tuple[TopicPartition, list[Record]]]) -> None:
        if not self._tail.caught_up.is_set():
            await self._tail._check_caught_up()


class TailedView(Component):
    """A read model that a :class:`TopicTail` feeds: its lifecycle and readiness are the tail's."""

    _tail: TopicTail[Any]

    async def start(self) -> None:
        await self._tail.start()

    async def run(self) -> None:
        await self._tail.run()

    async def stop(self) -> None:
        await self._tail.stop()

    def ready(self) -> bool:
        return self._tail.ready()
