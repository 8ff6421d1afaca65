"""Kafka clients shared by the services: a publisher of messages, consumers, the dead-letter path.

Messages become records only through the one codec. Every produced record carries the current
trace context (W3C ``traceparent`` header) and gets a PRODUCER span; ``consume_span`` continues
that trace on the consuming side. Only the OpenTelemetry API is used here: spans are no-ops until
a service calls ``waitroom_platform.telemetry.setup_telemetry``.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, RecordMetadata
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from waitroom_events.base import Message
from waitroom_events.codec import EncodedRecord, Headers, encode
from waitroom_events.topics import dlq_name
from waitroom_platform import compat
from waitroom_platform.runtime import Component
from waitroom_platform.settings import KafkaSettings

log = structlog.get_logger()

HEADER_ERROR = "waitroom-error"
HEADER_SOURCE_TOPIC = "waitroom-source-topic"
HEADER_SOURCE_PARTITION = "waitroom-source-partition"
HEADER_SOURCE_OFFSET = "waitroom-source-offset"

TRACE_HEADERS = ("traceparent", "tracestate", "baggage")

tracer = trace.get_tracer("waitroom.kafka")


def tracing() -> bool:
    """Whether this process records spans (``setup_telemetry`` installed an SDK provider). Hot
    paths skip the span machinery when it does not and carry the trace context along as it came."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def trace_headers(headers: Headers | None) -> list[tuple[str, bytes]]:
    """The W3C trace context headers of a record, as they are (to pass them on without a span)."""
    return [(k, v) for k, v in headers or () if k in TRACE_HEADERS]


def outgoing_headers(extra: Iterable[tuple[str, bytes]] = ()) -> list[tuple[str, bytes]]:
    """``extra`` plus the current trace context (W3C ``traceparent``), so the trace crosses Kafka."""
    headers = [(k, v) for k, v in extra if k not in TRACE_HEADERS]
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    headers.extend((key, value.encode()) for key, value in carrier.items())
    return headers


def extract_context(headers: Headers | None) -> otel_context.Context:
    carrier = {k: v.decode("latin-1") for k, v in headers or () if k in TRACE_HEADERS}
    return propagate.extract(carrier)


def message_attributes(message: Message) -> dict[str, str]:
    """The ``waitroom.*`` span attributes that name what a message is about."""
    attributes = {"waitroom.room_id": message.room_id, "waitroom.message_type": message.TYPE}
    ticket_id = getattr(message, "ticket_id", None)
    if isinstance(ticket_id, str):
        attributes["waitroom.ticket_id"] = ticket_id
    return attributes


@contextmanager
def consume_span(
    record: ConsumerRecord[Any, Any], group: str | None = None, message: Message | None = None
) -> Iterator[trace.Span]:
    """A CONSUMER span for handling one record, continuing the trace of whoever produced it."""
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
    }
    if group:
        attributes["messaging.consumer.group.name"] = group
    if message is not None:
        attributes.update(message_attributes(message))
    with tracer.start_as_current_span(
        f"process {record.topic}",
        context=extract_context(record.headers),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    ) as span:
        yield span


@contextmanager
def handed_over_span(
    topic: str, partition: int, group: str, message: Message, headers: Headers | None
) -> Iterator[trace.Span]:
    """The CONSUMER span of a command handed to the sequencer by the API of its own process, not
    read from ``topic`` (docs/adr/0011): as ``consume_span``, continuing the trace of the request
    whose context ``headers`` carry, with ``waitroom.handed_over`` set and no offset."""
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition),
        "messaging.consumer.group.name": group,
        "waitroom.handed_over": True,
        **message_attributes(message),
    }
    with tracer.start_as_current_span(
        f"process {topic}", context=extract_context(headers), kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


@contextmanager
def produce_span(topic: str, message: Message, partition: int | None = None) -> Iterator[trace.Span]:
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
        "messaging.kafka.message.key": message.room_id,
        **message_attributes(message),
    }
    if partition is not None:
        attributes["messaging.destination.partition.id"] = str(partition)
    with tracer.start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes) as span:
        yield span


def make_producer(kafka: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent producer that waits for all in-sync replicas: a record acknowledged is kept."""
    options: dict[str, Any] = {
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 2,
        "request_timeout_ms": 10_000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**kafka.client_kwargs(), **options)


class ProducerComponent(Component):
    """A producer as a runtime component: started before, stopped after, what publishes through it."""

    def __init__(self, producer: AIOKafkaProducer, name: str = "producer") -> None:
        self.producer = producer
        self.name = name

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()


def make_consumer(kafka: KafkaSettings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        # The broker answers a fetch as soon as a record is there (fetch.min.bytes 1), whatever this
        # says: it only bounds how long a fetch of an idle partition is held. A short wait bought no
        # latency (a join's events reached the read model 1.9 ms after their commit with 500 ms,
        # 4.5 ms with 5 ms) but made every idle consumer send fetches back to back: a request and a
        # response decoded in Python, and one answered by Kafka, 50-200 times a second each.
        "fetch_max_wait_ms": 500,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **kafka.client_kwargs(), **options)


#: how long a reader made by :func:`make_reader` lets the broker hold a fetch at a partition's end
READER_FETCH_WAIT_MS = 10
#: and how much of one partition it takes per fetch: a recovery reads whole partitions
READER_PARTITION_FETCH_BYTES = 8 * 1024 * 1024


def make_reader(kafka: KafkaSettings, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer without a group for reads to a partition's end, one after another (recoveries).

    Once a read reaches the end, aiokafka's fetcher asks again at once, and the broker holds that
    fetch for ``fetch_max_wait_ms``. The broker answers a connection's requests in order, so the
    next read's ``ListOffsets`` waited behind it: with :func:`make_consumer`'s 500 ms, the reaper's
    three reads of an empty partition took 1.5 s, 18 s for 12 partitions inside its group's
    rebalance, longer than its session: the group expelled it and it began again (2026-12-02).
    The reader lives for one recovery, so its idle fetches cost nothing worth the wait.
    """
    defaults = {"fetch_max_wait_ms": READER_FETCH_WAIT_MS, "max_partition_fetch_bytes": READER_PARTITION_FETCH_BYTES}
    return make_consumer(kafka, **{**defaults, **overrides})


async def partitions_of(consumer: AIOKafkaConsumer, topic: str, timeout_s: float = 5.0) -> list[int]:
    """The partition numbers of ``topic``, loading its metadata first; [] if it does not exist."""
    import asyncio

    client = compat.cluster_client(consumer)  # aiokafka offers no public metadata refresh for manual assignment
    client.add_topic(topic)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions or loop.time() > deadline:
            return sorted(partitions or ())
        await client.force_metadata_update()
        if not consumer.partitions_for_topic(topic):
            await asyncio.sleep(0.1)


class Publisher:
    """Publishes messages through the codec, keyed by room."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def publish(
        self,
        topic: str,
        message: Message,
        *,
        partition: int | None = None,
        headers: Iterable[tuple[str, bytes]] = (),
        timestamp_ms: int | None = None,
    ) -> RecordMetadata:
        """Send the record and wait until the broker has it (the span lasts until then)."""
        if not tracing():  # the API's hot path (a join): no span machinery when nothing records spans
            metadata: RecordMetadata = await (
                await self._queue(topic, message, partition, headers, timestamp_ms, traced=False)
            )
            return metadata
        with produce_span(topic, message, partition):
            delivery = await self._queue(topic, message, partition, headers, timestamp_ms)
            metadata = await delivery
            return metadata

    async def send(
        self,
        topic: str,
        message: Message,
        *,
        partition: int | None = None,
        headers: Iterable[tuple[str, bytes]] = (),
        timestamp_ms: int | None = None,
    ) -> Any:
        """Queue the record and return the delivery future (for batching, inside transactions too).

        ``timestamp_ms`` sets the record's timestamp (a delay topic's records are due by it).
        """
        with produce_span(topic, message, partition):
            return await self._queue(topic, message, partition, headers, timestamp_ms)

    async def _queue(
        self,
        topic: str,
        message: Message,
        partition: int | None,
        headers: Iterable[tuple[str, bytes]],
        timestamp_ms: int | None,
        *,
        traced: bool = True,
    ) -> Any:
        record = encode(message, outgoing_headers(headers) if traced else list(headers))
        return await self.producer.send(
            topic, record.value, key=record.key, partition=partition, headers=record.headers, timestamp_ms=timestamp_ms
        )


async def queue_records(
    producer: AIOKafkaProducer, topic: str, partition: int, records: Sequence[EncodedRecord]
) -> list[asyncio.Future[Any]]:
    """Queue encoded records for one partition, in order, as whole record batches (inside a
    transaction too: the batch's partition joins it); returns the delivery futures. Much cheaper
    per record than ``send`` for a burst of records known at once (the sequencer's events)."""
    return [delivery for delivery, _ in await queue_record_batches(producer, topic, partition, records)]


async def queue_record_batches(
    producer: AIOKafkaProducer, topic: str, partition: int, records: Sequence[EncodedRecord]
) -> list[tuple[asyncio.Future[Any], int]]:
    """:func:`queue_records`, with the number of records of each batch: a batch's delivery names
    its base offset, so its last record is at base + count - 1."""
    deliveries = []
    batch = producer.create_batch()
    count = 0
    for record in records:
        if batch.append(key=record.key, value=record.value, timestamp=None, headers=record.headers) is None:
            deliveries.append((await producer.send_batch(batch, topic, partition=partition), count))
            batch, count = producer.create_batch(), 0
            if batch.append(key=record.key, value=record.value, timestamp=None, headers=record.headers) is None:
                raise ValueError(f"a record of {len(record.value)} bytes does not fit in a batch")
        count += 1
    deliveries.append((await producer.send_batch(batch, topic, partition=partition), count))
    return deliveries


def dead_letter_headers(record: ConsumerRecord[Any, Any], error: BaseException | str) -> list[tuple[str, bytes]]:
    text = error if isinstance(error, str) else "".join(traceback.format_exception_only(error)).strip()
    original: Headers = list(record.headers or ())
    return [
        *original,
        (HEADER_ERROR, text[:2000].encode()),
        (HEADER_SOURCE_TOPIC, record.topic.encode()),
        (HEADER_SOURCE_PARTITION, str(record.partition).encode()),
        (HEADER_SOURCE_OFFSET, str(record.offset).encode()),
    ]


@dataclass(frozen=True)
class DeadLetter:
    """A record that cannot be handled, as it goes to ``<topic>.dlq``: unchanged, the error in headers."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int
    headers: list[tuple[str, bytes]]


def dead_letter(record: ConsumerRecord[Any, Any], error: BaseException | str) -> DeadLetter:
    """The dead letter of ``record`` (logged once here, whichever producer sends it)."""
    log.warning(
        "record_dead_lettered",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        error=str(error)[:300],
    )
    return DeadLetter(
        dlq_name(record.topic), record.key, record.value, record.partition, dead_letter_headers(record, error)
    )


async def send_to_dead_letter(
    producer: AIOKafkaProducer, record: ConsumerRecord[Any, Any], error: BaseException | str
) -> Any:
    """Park a record that cannot be handled on ``<topic>.dlq``; returns the delivery future, which
    the caller awaits before committing past the record."""
    letter = dead_letter(record, error)
    return await producer.send(
        letter.topic, letter.value, key=letter.key, partition=letter.partition, headers=letter.headers
    )
