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
it). With ``read_ahead`` the next records are fetched while a batch is handled (:class:`ReadAhead`).
:func:`read_to_end` is the other half of consuming: folding a partition up to its current end to
rebuild state.
"""

from __future__ import annotations

import asyncio
import contextlib
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


class ReadAhead:
    """Fetches a consumer's records in a task of its own, so the next ones arrive while a batch is
    handled.

    aiokafka's fetcher sends no fetch to a broker while any partition it leads there holds fetched
    records the application has not taken yet (up to ``prefetch_backoff``). A handler that awaits
    the broker (the sequencer's transaction) therefore holds back the fetch of everything behind
    its batch: a command that arrives during one transaction is fetched after it ends, but
    usually too late for the next one, and waits for two. Here the records are taken from the
    fetcher as soon as they arrive, which lets it fetch again at once, and are buffered (at most
    about ``limit`` of them; then fetching pauses) until :meth:`take`. A seek must :meth:`drop` the
    partition's buffered records: the fetcher forgets its own, this buffer would not.
    """

    def __init__(self, consumer: AIOKafkaConsumer, *, limit: int, max_records: int) -> None:
        self._consumer = consumer
        self._limit = limit
        self._max_records = max_records
        self._buffered: dict[TopicPartition, list[Record]] = {}
        self._count = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _read(self) -> None:
        try:
            while True:
                await self._room.wait()
                fetched = await self._consumer.getmany(timeout_ms=1_000, max_records=self._max_records)
                for tp, records in fetched.items():
                    if records:
                        self._buffered.setdefault(tp, []).extend(records)
                        self._count += len(records)
                if self._count:
                    self._arrived.set()
                if self._count >= self._limit:
                    self._room.clear()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which raises it from take()
            self._failure = exc
            self._arrived.set()

    async def take(self, timeout_s: float, max_records: int) -> dict[TopicPartition, list[Record]]:
        """What is buffered, at most ``max_records`` per partition, waiting up to ``timeout_s`` for
        something; raises what fetching raised."""
        if not self._count and self._failure is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._arrived.wait()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            self._arrived.clear()
            if self._task is not None and self._task.done():
                self.start()  # the next take fetches again
            raise failure
        taken: dict[TopicPartition, list[Record]] = {}
        for tp, records in list(self._buffered.items()):
            taken[tp], rest = records[:max_records], records[max_records:]
            self._count -= len(taken[tp])
            if rest:
                self._buffered[tp] = rest
            else:
                del self._buffered[tp]
        self._settle()
        return taken

    def drop(self, tp: TopicPartition) -> None:
        """Forget the partition's buffered records (it was sought, revoked or rewound)."""
        records = self._buffered.pop(tp, None)
        if records:
            self._count -= len(records)
            self._settle()

    def _settle(self) -> None:
        if not self._count:
            self._arrived.clear()
        if self._count < self._limit:
            self._room.set()


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
        read_ahead: int = 0,
        name: str = "consumer",
    ) -> None:
        """``accepts``: the message types, or per topic name; ``producer``: where poison is parked
        (``None``: poison is only logged, for topics whose dead letters another service owns);
        ``commit=False`` for consumers without a group (read models); ``read_ahead``: records
        fetched ahead of the handler at most (0: none, each fetch waits for the previous batch)."""
        self.consumer = consumer
        self._accepts = accepts
        self._handler = handler
        self._producer = producer
        self._commit = commit
        self._chunk_size = chunk_size
        self._max_records = max_records
        self._fetch_timeout_ms = fetch_timeout_ms
        self.read_ahead = ReadAhead(consumer, limit=read_ahead, max_records=max_records) if read_ahead else None
        self.name = name

    async def run(self) -> None:
        if self.read_ahead is not None:
            self.read_ahead.start()
        try:
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
        finally:
            if self.read_ahead is not None:
                await self.read_ahead.stop()

    # ---------------------------------------------------------------- the steps

    async def before_fetch(self) -> None:
        """Runs before each fetch (change the assignment here)."""

    async def after_fetch(self, batches: Sequence[tuple[TopicPartition, list[Record]]]) -> None:
        """Runs after each fetch was processed."""

    async def fetch(self) -> Mapping[TopicPartition, list[Record]]:
        if self.read_ahead is not None:
            return await self.read_ahead.take(self._fetch_timeout_ms / 1000, self._max_records)
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
        if self.read_ahead is not None:
            self.read_ahead.drop(tp)
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
