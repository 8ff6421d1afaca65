"""Follow every partition of a topic from its beginning, without a consumer group.

Read models use this: every replica sees every room, and replaying from the start rebuilds the
state the log describes. ``caught_up`` is set once the tail has read everything that was committed
when it started, which is when a read model can answer truthfully.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from waitroom_platform.kafka import make_consumer, partitions_of
from waitroom_platform.settings import KafkaSettings

log = structlog.get_logger()

Record: TypeAlias = ConsumerRecord[Any, Any]
BatchHandler = Callable[[Sequence[Record]], Awaitable[None] | None]


class TopicTail:
    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        on_batch: BatchHandler,
        *,
        from_beginning: bool = True,
        max_records: int = 2000,
    ) -> None:
        self._kafka = kafka
        self.topic = topic
        self._on_batch = on_batch
        self._from_beginning = from_beginning
        self._max_records = max_records
        self._consumer: AIOKafkaConsumer | None = None
        self._targets: dict[TopicPartition, int] = {}
        self.caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = make_consumer(self._kafka, fetch_max_wait_ms=10, max_partition_fetch_bytes=4 * 1024 * 1024)
        await consumer.start()
        self._consumer = consumer
        partitions = await partitions_of(consumer, self.topic)
        if not partitions:
            await consumer.stop()
            raise RuntimeError(f"topic {self.topic!r} does not exist; create the topics first")
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(tps)
        if self._from_beginning:
            await consumer.seek_to_beginning(*tps)
            self._targets = {tp: off for tp, off in (await consumer.end_offsets(tps)).items() if off > 0}
        else:
            await consumer.seek_to_end(*tps)
        if not self._targets:
            self.caught_up.set()
        self._task = asyncio.create_task(self._run(), name=f"tail:{self.topic}")

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=self._max_records)
            for records in batches.values():
                result = self._on_batch(records)
                if result is not None:
                    await result
            if not self.caught_up.is_set():
                await self._check_caught_up()

    async def _check_caught_up(self) -> None:
        assert self._consumer is not None
        for tp, target in list(self._targets.items()):
            if await self._consumer.position(tp) >= target:
                del self._targets[tp]
        if not self._targets:
            log.info("tail_caught_up", topic=self.topic)
            self.caught_up.set()

    @property
    def failed(self) -> BaseException | None:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            return self._task.exception()
        return None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: S110 - stopping; errors were logged
                pass
        if self._consumer is not None:
            await self._consumer.stop()
