"""The one consumer skeleton: fetch, decode to a message type, hand over, dead-letter, commit.

Every service consumes the same way, so it is written once:

1. ``fetch()`` a batch (``getmany``; a delay topic overrides it to hand over only due records);
2. per partition, in chunks of ``chunk_size``, ``decode()`` each record with the one codec into one
   of the types the loop accepts; a record that does not decode, or is of another type, is poison;
3. the handler gets the decoded ``(record, message)`` pairs of the chunk, in offset order, and
   returns the ones it could not handle, with the reason (more poison);
4. poison goes to ``<topic>.dlq`` (``dead_letter()``; or is only logged where another service owns
   the topic's dead letters) before
5. ``commit()`` of the offset after the chunk. A commit that fails (the group moved on) rewinds the
   partition to the chunk's start and drops the rest of the fetch, so a record is never skipped.

A handler that raises stops the loop with nothing of its chunk committed. Subclasses override the
steps they do differently (the sequencer wraps a chunk in a Kafka transaction and commits inside
it). :func:`read_to_end` is the other half of consuming: folding a partition up to its current end
to rebuild state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeAlias, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from waitroom_events.base import Message
from waitroom_events.codec import DecodeError, decode
from waitroom_platform.kafka import send_to_dead_letter

log = structlog.get_logger()

Record: TypeAlias = ConsumerRecord[Any, Any]
M = TypeVar("M", bound=Message)
Poison: TypeAlias = tuple[Record, BaseException | str]
#: what a loop accepts, as ``isinstance`` takes it: a message type, a tuple or a union of them
Accepts: TypeAlias = Any
#: hands over one chunk of decoded records of one partition; returns what it could not handle
Handler: TypeAlias = Callable[[TopicPartition, Sequence[tuple[Record, M]]], Awaitable[Sequence[Poison] | None]]


class ConsumerLoop(Generic[M]):
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        accepts: Accepts | Mapping[str, Accepts],
        handler: Handler[M],
        *,
        producer: AIOKafkaProducer | None = None,
        commit: bool = True,
        chunk_size: int | None = None,
        max_records: int = 500,
        fetch_timeout_ms: int = 500,
        name: str = "consumer",
    ) -> None:
        """``accepts``: the message types, or per topic name; ``producer``: where poison is parked
        (``None``: poison is only logged, for topics whose dead letters another service owns);
        ``commit=False`` for consumers without a group (read models)."""
        self.consumer = consumer
        self._accepts = accepts
        self._handler = handler
        self._producer = producer
        self._commit = commit
        self._chunk_size = chunk_size
        self._max_records = max_records
        self._fetch_timeout_ms = fetch_timeout_ms
        self.name = name

    async def run(self) -> None:
        while True:
            await self.before_fetch()
            batches = list((await self.fetch()).items())
            for index, (tp, records) in enumerate(batches):
                if records and not await self.process(tp, records):
                    for other, rest in batches[index + 1 :]:
                        if rest:
                            self.rewind(other, rest[0].offset)
                    break
            await self.after_fetch(batches)

    # ---------------------------------------------------------------- the steps

    async def before_fetch(self) -> None:
        """Runs before each fetch (change the assignment here)."""

    async def after_fetch(self, batches: Sequence[tuple[TopicPartition, list[Record]]]) -> None:
        """Runs after each fetch was processed."""

    async def fetch(self) -> Mapping[TopicPartition, list[Record]]:
        return await self.consumer.getmany(timeout_ms=self._fetch_timeout_ms, max_records=self._max_records)

    def accepted(self, topic: str) -> Accepts:
        if isinstance(self._accepts, Mapping):
            return self._accepts.get(topic, ())
        return self._accepts

    def decode(self, record: Record) -> M | BaseException:
        decoded: M | BaseException = decode_as(record, self.accepted(record.topic))
        return decoded

    async def process(self, tp: TopicPartition, records: Sequence[Record]) -> bool:
        """Decode, hand over, dead-letter and commit ``records`` chunk by chunk; False if a commit failed."""
        size = self._chunk_size or len(records)
        for start in range(0, len(records), size):
            chunk = records[start : start + size]
            good: list[tuple[Record, M]] = []
            poison: list[Poison] = []
            for record in chunk:
                decoded = self.decode(record)
                if isinstance(decoded, BaseException):
                    poison.append((record, decoded))
                else:
                    good.append((record, decoded))
            if good:
                poison.extend(await self._handler(tp, good) or ())
            if poison:
                poison.sort(key=lambda p: p[0].offset)
                await self.dead_letter(tp, poison)
            if not await self.commit(tp, chunk[-1].offset + 1):
                self.rewind(tp, chunk[0].offset)
                return False
        return True

    async def dead_letter(self, tp: TopicPartition, poison: Sequence[Poison]) -> None:
        if self._producer is None:
            for record, error in poison:
                log.error(
                    "record_skipped",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    error=str(error),
                )
            return
        deliveries = [await send_to_dead_letter(self._producer, record, error) for record, error in poison]
        for delivery in deliveries:
            await delivery

    async def commit(self, tp: TopicPartition, offset: int) -> bool:
        if not self._commit:
            return True
        try:
            await self.consumer.commit({tp: offset})
        except Exception as exc:  # noqa: BLE001 - any commit failure means: re-read, never skip
            log.warning("commit_failed", consumer=self.name, topic=tp.topic, partition=tp.partition, error=repr(exc))
            return False
        return True

    def rewind(self, tp: TopicPartition, offset: int) -> None:
        try:
            self.consumer.seek(tp, offset)
        except Exception:  # noqa: BLE001,S110 - no longer ours: its new owner reads from the committed offset
            pass


def decode_as(record: Record, accepts: Accepts) -> Any:
    """The record's message if it decodes into one of ``accepts``, else the error that makes it poison."""
    try:
        message = decode(record.value, record.headers)
    except DecodeError as exc:
        return exc
    if not isinstance(message, accepts):
        return DecodeError(f"{message.TYPE} does not belong on {record.topic}")
    return message


async def read_to_end(
    reader: AIOKafkaConsumer,
    tp: TopicPartition,
    fold: Callable[[Record], None],
    start: int | None = 0,
    *,
    max_records: int = 10_000,
) -> int:
    """Fold ``tp`` from ``start`` (0 or less: its beginning; None: fold nothing) to its end now.

    Assigns ``reader`` to ``tp`` alone. Returns the end offset, where a live reader continues.
    """
    reader.assign([tp])
    end = (await reader.end_offsets([tp]))[tp]
    if start is None:
        return end
    if start <= 0:
        await reader.seek_to_beginning(tp)
    else:
        reader.seek(tp, start)
    while await reader.position(tp) < end:
        batch = await reader.getmany(tp, timeout_ms=500, max_records=max_records)
        for record in batch.get(tp, []):
            if record.offset < end:  # a live reader goes on from ``end``: fold nothing twice
                fold(record)
    return end
