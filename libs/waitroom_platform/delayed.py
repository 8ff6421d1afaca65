"""A consumer of a delay topic: each record is due at its timestamp plus the topic's fixed delay.

The pattern of Spring Kafka's retry topics, on aiokafka. A delay topic's partition is ordered by
time of writing, so only its head can be due first: the consumer keeps the records it has fetched
per partition, hands every due one to the handler, and **pauses** a partition whose head is not due
yet, so the broker sends nothing more for it. One ``getmany`` wait, bounded by the earliest head's
due time, serves every partition: no busy loop and no sleep per record. Once a partition's buffer is
drained it is resumed and fetched again from where it stopped.

The consumer commits, per partition, the offset after the last record the handler returned from,
so a crash re-delivers exactly the records that were not handled (at least once: handlers must be
idempotent). A handler that raises stops the consumer without committing the batch.

Partitions come from a consumer group. ``on_assigned`` runs before any record of a newly assigned
partition is handed over (the reaper rebuilds its state there); ``on_revoked`` after the last one.

``on_assigned`` does not run inside the group's assignment callback but in a task of its own that
the callback starts. aiokafka sends the group no heartbeat while the callback runs, so a listener
that took longer than the session (the reaper replaying a partition of many live tickets) would be
expelled, given the same partitions again and start over, for ever. Until the task is done, the
partitions it prepares are fetched and kept, not handed over; a revocation cancels it first. A
listener that fails stops the consumer (``run`` raises its error): handing over the records of a
partition that was not prepared would judge tickets on a state that was never rebuilt.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError

from waitroom_events.base import Message
from waitroom_platform.consume import ConsumerLoop, Record
from waitroom_platform.kafka import make_consumer
from waitroom_platform.settings import KafkaSettings

log = structlog.get_logger()

#: Handles the due records of one partition, in offset order. Returns once they are handled.
DueHandler = Callable[[int, Sequence[Record]], Awaitable[None]]


class AssignmentListener(Protocol):
    async def on_assigned(self, partitions: list[int]) -> None: ...

    async def on_revoked(self, partitions: list[int]) -> None: ...


#: how often the loop looks whether a partition's listener has finished preparing it
PREPARING_POLL_S = 0.05


def due_at(record: Record, delay_s: float) -> float:
    """When a record of a delay topic is due: its timestamp plus the topic's delay."""
    return float(record.timestamp) / 1000.0 + delay_s


class DelayedConsumer:
    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        delay_s: float,
        handler: DueHandler,
        *,
        group_id: str,
        listener: AssignmentListener | None = None,
        max_records: int = 2000,
        max_future_s: float = 60.0,
        idle_poll_s: float = 0.5,
        clock: Callable[[], float] = time.time,
        **consumer_options: Any,
    ) -> None:
        """``max_future_s``: a record due later than ``now + delay_s + max_future_s`` (a producer
        clock far ahead) is handed over at once instead of blocking its partition for ever."""
        self._kafka = kafka
        self.topic = topic
        self.delay_s = delay_s
        self._handler = handler
        self._group_id = group_id
        self._listener = listener
        self._max_records = max_records
        self._max_future_s = max_future_s
        self._idle_poll_s = idle_poll_s
        self._clock = clock
        self._consumer_options = consumer_options
        self._consumer: AIOKafkaConsumer | None = None
        self._buffers: dict[int, deque[Record]] = {}
        #: assigned, but the listener is still preparing them: records are kept, not handed over yet
        self._preparing: set[int] = set()
        self._lock = asyncio.Lock()
        #: the listener's ``on_assigned`` of the latest assignment, while it runs
        self._preparation: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    @property
    def owned(self) -> list[int]:
        return sorted(self._buffers)

    @property
    def held(self) -> list[int]:
        """Partitions paused because their head record is not due yet."""
        if self._consumer is None:
            return []
        return sorted(tp.partition for tp in self._consumer.paused())

    async def committed(self, partition: int) -> int:
        """The group's committed offset of ``partition`` (0 when none)."""
        assert self._consumer is not None
        offset = await self._consumer.committed(TopicPartition(self.topic, partition))
        return offset or 0

    async def run(self) -> None:
        options: dict[str, Any] = {
            "group_id": self._group_id,
            "max_poll_records": self._max_records,
            "partition_assignment_strategy": (RangePartitionAssignor,),
            "session_timeout_ms": 10_000,
            "heartbeat_interval_ms": 1_000,
            "rebalance_timeout_ms": 60_000,
        }
        options.update(self._consumer_options)
        consumer = make_consumer(self._kafka, **options)
        self._consumer = consumer
        await consumer.start()
        consumer.subscribe([self.topic], listener=_Rebalance(self))
        log.info("delayed_consumer_started", topic=self.topic, delay_s=self.delay_s, group=self._group_id)
        try:
            await _DueLoop(self, consumer).run()
        finally:
            await self._cancel_preparation()
            await consumer.stop()

    # ---------------------------------------------------------------- the schedule

    def _is_due(self, record: Record, now: float) -> bool:
        due = due_at(record, self.delay_s)
        return due <= now or due > now + self.delay_s + self._max_future_s

    def _take_due(self) -> dict[TopicPartition, list[Record]]:
        """Pop the due heads of every partition that is not being prepared."""
        now = self._clock()
        due: dict[TopicPartition, list[Record]] = {}
        for partition, buffer in self._buffers.items():
            records: list[Record] = []
            while buffer and partition not in self._preparing and self._is_due(buffer[0], now):
                records.append(buffer.popleft())
            if records:
                due[TopicPartition(self.topic, partition)] = records
        return due

    def _hold_undue(self, consumer: AIOKafkaConsumer) -> None:
        """A head that is not due yet holds its partition: nothing behind it can be due first."""
        paused = consumer.paused()
        for partition, buffer in self._buffers.items():
            tp = TopicPartition(self.topic, partition)
            if buffer:
                if tp not in paused:
                    consumer.pause(tp)
            elif tp in paused:
                consumer.resume(tp)

    def _wait_ms(self) -> int:
        """How long the next fetch may wait: until the earliest head is due, at most ``idle_poll_s``."""
        now = self._clock()
        wait = self._idle_poll_s
        if self._preparing:
            wait = PREPARING_POLL_S  # the listener may finish any moment; it cannot wake the fetch
        for partition, buffer in self._buffers.items():
            if buffer and partition not in self._preparing:
                wait = min(wait, due_at(buffer[0], self.delay_s) - now)
        # Never 0: a zero-timeout fetch returns without yielding, and the loop would starve every other task.
        return max(1, int(wait * 1000) + 1)

    # ---------------------------------------------------------------- ownership

    async def _assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """The group's assignment callback: it only notes the new partitions and starts preparing
        them (the module docstring says why the listener does not run here)."""
        new = sorted(tp.partition for tp in partitions if tp.partition not in self._buffers)
        # aiokafka fetches a partition as soon as it is assigned, while the listener still runs: keep
        # what arrives meanwhile, and hand it over only once the listener is done.
        async with self._lock:
            for partition in new:
                self._buffers[partition] = deque()
                self._preparing.add(partition)
        log.info("delay_partitions_assigned", topic=self.topic, partitions=new, owned=self.owned)
        if new and self._listener is not None:
            self._preparation = asyncio.get_running_loop().create_task(self._prepare(self._listener, new))
        else:
            self._preparing.difference_update(new)
            self.ready.set()

    async def _prepare(self, listener: AssignmentListener, partitions: list[int]) -> None:
        """One partition after another, each handed over as soon as it is prepared."""
        started = time.monotonic()
        for partition in partitions:
            await listener.on_assigned([partition])
            self._preparing.discard(partition)
        log.info(
            "delay_partitions_prepared",
            topic=self.topic,
            partitions=partitions,
            prepare_s=round(time.monotonic() - started, 3),
        )
        self.ready.set()

    def _raise_if_preparation_failed(self) -> None:
        preparation = self._preparation
        if preparation is not None and preparation.done():
            self._preparation = None
            error = None if preparation.cancelled() else preparation.exception()
            if error is not None:
                raise error

    async def _cancel_preparation(self) -> None:
        """Ends a preparation still running (a revocation, a stop); what it prepared is revoked after."""
        preparation, self._preparation = self._preparation, None
        if preparation is not None and not preparation.done():
            preparation.cancel()
            await asyncio.wait({preparation})

    async def _revoked(self, partitions: Iterable[TopicPartition]) -> None:
        await self._cancel_preparation()
        async with self._lock:
            gone = sorted(tp.partition for tp in partitions if self._buffers.pop(tp.partition, None) is not None)
            self._preparing.difference_update(gone)
        if gone and self._listener is not None:
            await self._listener.on_revoked(gone)
        log.info("delay_partitions_revoked", topic=self.topic, partitions=gone)


class _DueLoop(ConsumerLoop[Message]):
    """The consumer skeleton on a delay topic: a fetch buffers what the broker sends and hands over
    only the due heads; the handler gets them raw (it decodes and dead-letters itself)."""

    def __init__(self, owner: DelayedConsumer, consumer: AIOKafkaConsumer) -> None:
        super().__init__(consumer, (), _unused, max_records=owner._max_records, name=f"delayed:{owner.topic}")
        self._owner = owner

    async def fetch(self) -> Mapping[TopicPartition, list[Record]]:
        owner = self._owner
        owner._raise_if_preparation_failed()
        async with owner._lock:
            due = owner._take_due()
        if due:
            return due
        batches = await self.consumer.getmany(timeout_ms=owner._wait_ms(), max_records=owner._max_records)
        for tp, records in batches.items():
            buffer = owner._buffers.get(tp.partition)
            if buffer is not None:
                buffer.extend(records)
        return {}

    async def process(self, tp: TopicPartition, records: Sequence[Record]) -> bool:
        owner = self._owner
        async with owner._lock:
            if tp.partition not in owner._buffers:
                return True  # revoked since it was taken: its next owner gets these records
            await owner._handler(tp.partition, records)
            await self.commit(tp, records[-1].offset + 1)
        return True

    async def commit(self, tp: TopicPartition, offset: int) -> bool:
        try:
            await self.consumer.commit({tp: offset})
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partition meanwhile: its next owner gets these records again,
            # which idempotent handlers allow (the buffer goes on; nothing is re-fetched here).
            log.warning("delay_commit_failed", topic=tp.topic, partition=tp.partition, error=repr(exc))
        return True

    async def after_fetch(self, batches: Sequence[tuple[TopicPartition, list[Record]]]) -> None:
        async with self._owner._lock:
            self._owner._hold_undue(self.consumer)


async def _unused(tp: TopicPartition, records: Sequence[tuple[Record, Message]]) -> None:
    raise AssertionError("the delay loop hands records over raw")


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: DelayedConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner._revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._owner._assigned(assigned)
