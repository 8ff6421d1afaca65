"""The faust app: tables folded from room-events, snapshots on a timer, thresholds on snapshots.

Tables (each changelogged, partitioned like room-events, so partition ``p`` of every table holds the
rooms of partition ``p`` of the log):

* ``gauges``   room -> live gauges (:class:`waitroom_core.windows.Gauges`)
* ``seconds``  (room, 1-second tumbling window by event time) -> :class:`Bucket`; kept 15 minutes
* ``alerts``   room -> :class:`AlertState` (open alerts, hysteresis)

An admission's wait comes from the event itself (``TicketAdmitted.issued_at``); until that field
existed a ``tickets`` table kept every live ticket's join time, two changelog records per ticket
(docs/adr/0010).

Values are stored in the dict forms of :mod:`waitroom_stats.tables`.

faust commits offsets at least once, and its ``exactly_once`` mode is not usable (docs/adr/0004).
So every table value carries the offset of the last record applied to it (``o``): after a crash the
records replayed from the last committed offset find their effect already in the recovered table
and are skipped. Counts after a restart equal counts before.

Room events are folded a batch at a time (up to ``FOLD_BATCH_MAX`` records, or what arrived within
``FOLD_BATCH_WITHIN_S``): a room's gauges and each of its one-second buckets are written once per
batch, not once per event, since every write is a changelog record for Kafka and a send through
faust's producer (folding one event at a time was 0.9 ms of CPU per event, more than the API's
join, in the whole-system bench). faust acknowledges a batch's records only after it is folded
and written (``Stream.take_events``), so a crash replays them and the offsets above skip what was
already written.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, cast

import faust
import structlog
from aiokafka.structs import ConsumerRecord
from faust.streams import _current_event
from faust.types import EventT, WindowT
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext

from waitroom_core.thresholds import evaluate
from waitroom_core.windows import (
    BUCKET_RETENTION_S,
    Bucket,
    add_to_bucket,
    counts_bucket,
    evolve_gauges,
    is_live,
    second_of,
    snapshot,
)
from waitroom_events.base import Message
from waitroom_events.codec import encode
from waitroom_events.events import RoomEvent, StateEvent, TicketAdmitted
from waitroom_events.stats import RoomStats
from waitroom_events.topics import TopicSpec
from waitroom_platform.consume import Accepts, decode_as
from waitroom_platform.kafka import (
    consume_span,
    dead_letter,
    message_attributes,
    outgoing_headers,
    produce_span,
)
from waitroom_platform.telemetry import tracing
from waitroom_stats.settings import StatsSettings
from waitroom_stats.tables import (
    alert_state_from_table,
    alert_state_to_table,
    bucket_from_table,
    bucket_to_table,
    gauges_from_table,
    gauges_to_table,
)
from waitroom_stats.transport import CommittedReadTransport

log = structlog.get_logger()
tracer = trace.get_tracer("waitroom.stats")

#: a snapshot links to at most this many of the events it summarises (the latest ones)
MAX_SNAPSHOT_LINKS = 32
#: room events folded together: at most this many, or what arrived within this many seconds
#: (snapshots go out every few seconds, so the wait is not seen; see the module docstring)
FOLD_BATCH_MAX = 2000
FOLD_BATCH_WITHIN_S = 0.05

OFFSET = "o"


class StatsApp(faust.App):
    """faust.App reading the log ``read_committed`` (see :mod:`waitroom_stats.transport`)."""

    def _new_transport(self) -> Any:
        return CommittedReadTransport(self.conf.broker_consumer, self)


def headers_of(event: EventT) -> list[tuple[str, bytes]]:
    raw = event.message.headers
    if isinstance(raw, Mapping):
        return list(raw.items())
    return list(raw or ())


def as_record(event: EventT) -> ConsumerRecord[Any, Any]:
    """The faust message in aiokafka's shape, for the shared dead-letter headers."""
    m = event.message
    return ConsumerRecord(
        topic=m.topic,
        partition=m.partition,
        offset=m.offset,
        timestamp=int(m.timestamp * 1000),
        timestamp_type=0,
        key=m.key,
        value=m.value,
        checksum=None,
        serialized_key_size=len(m.key or b""),
        serialized_value_size=len(m.value or b""),
        headers=headers_of(event),
    )


class Stats:
    """The app and what its agents and timer do; the service's ``StatsWorker`` component makes it
    inside the running loop and runs it with faust's worker (``waitroom_stats.__main__``)."""

    def __init__(self, settings: StatsSettings) -> None:
        self.settings = settings
        registry = settings.common.topics()
        self.registry = registry
        partitions = registry.room_events.partitions
        brokers = [f"kafka://{host.strip()}" for host in settings.kafka.bootstrap_servers.split(",")]
        self.app = StatsApp(
            settings.group,
            broker=brokers,
            broker_client_id=f"{settings.kafka.client_id}-stats",
            broker_credentials=_credentials(settings),
            store="memory://",
            web_enabled=False,
            autodiscover=False,
            datadir=str(settings.data_path),
            topic_partitions=partitions,
            topic_allow_declare=True,
            # A worker snapshots the rooms in its tables: standby copies would snapshot them twice.
            table_standby_replicas=0,
            table_cleanup_interval=30.0,
            broker_commit_interval=settings.commit_interval_s,
            # A worker that died must hand its partitions over in seconds, not faust's default minute.
            broker_session_timeout=10.0,
            broker_heartbeat_interval=1.0,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            producer_linger=0.002,
            stream_wait_empty=False,
        )
        app = self.app
        # Records are the codec's JSON with the type in a header: faust passes the bytes through.
        self.room_events = self._raw_topic(registry.room_events.name, partitions)
        self.room_stats = self._raw_topic(registry.room_stats.name, partitions)
        self.alerts_topic = self._raw_topic(registry.alerts.name, partitions)
        self.gauges = app.Table("gauges", default=dict, partitions=partitions)
        # One bucket per room and event-time second; 1-second windows make the 5-minute view
        # slide by the second, and each event touches one key (see waitroom_core.windows).
        self.seconds = app.Table("seconds", default=dict, partitions=partitions).tumbling(
            1.0, expires=float(BUCKET_RETENTION_S)
        )
        self.alert_states = app.Table("alerts", default=dict, partitions=partitions)
        #: per room, the spans of the events folded since its last snapshot (what the snapshot links to)
        self.unsnapshotted: dict[str, deque[SpanContext]] = {}

        @app.agent(self.room_events, name="fold-room-events")
        async def fold_room_events(stream: faust.StreamT[bytes]) -> None:
            # StreamT does not declare take_events; faust's Stream has it (acks after each batch)
            batches = cast(Any, stream).take_events(FOLD_BATCH_MAX, within=FOLD_BATCH_WITHIN_S)
            async for events in batches:
                await self.on_room_events(events)

        @app.agent(self.room_stats, name="evaluate-thresholds")
        async def evaluate_thresholds(stream: faust.StreamT[bytes]) -> None:
            async for event in stream.events():
                await self.on_snapshot(event)

        @app.timer(settings.snapshot_interval_s, name="publish-snapshots")
        async def publish_snapshots() -> None:
            await self.publish_snapshots(time.time())

    def _raw_topic(self, name: str, partitions: int | None = None) -> faust.TopicT:
        return self.app.topic(
            name, partitions=partitions, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

    @property
    def window(self) -> WindowT:
        return cast(WindowT, self.seconds.table.window)

    # ---------------------------------------------------------------- topics faust writes

    def changelog_specs(self) -> list[TopicSpec]:
        """faust's changelog topics, created by us with the log's partition count (faust would use its own)."""
        n = self.registry.room_events.partitions
        compact = {"cleanup.policy": "compact"}
        windowed = {"cleanup.policy": "compact,delete", "retention.ms": str(2 * BUCKET_RETENTION_S * 1000)}
        return [
            TopicSpec(self.gauges.changelog_topic.get_topic_name(), n, compact),
            TopicSpec(self.seconds.table.changelog_topic.get_topic_name(), n, windowed),
            TopicSpec(self.alert_states.changelog_topic.get_topic_name(), n, compact),
        ]

    # ---------------------------------------------------------------- room events

    async def on_room_events(self, events: Sequence[EventT]) -> None:
        """Fold a batch of room events into the tables, in log order, and write what changed."""
        folds: dict[str, _RoomFold] = {}
        spans = tracing()
        for event in events:
            message = await self._decoded(event, RoomEvent)
            if not isinstance(message, StateEvent):
                continue
            fold = folds.get(message.room_id)
            if fold is None:
                fold = folds[message.room_id] = _RoomFold(self, message.room_id)
            if not spans:
                fold.apply(message, event)
                continue
            with consume_span(as_record(event), self.settings.group, message) as span:
                fold.apply(message, event)
            recent = self.unsnapshotted.setdefault(message.room_id, deque(maxlen=MAX_SNAPSHOT_LINKS))
            recent.append(span.get_span_context())
        for fold in folds.values():
            fold.write()

    # ---------------------------------------------------------------- snapshots

    def bucket_lookup(self, room_id: str) -> Any:
        table = self.seconds.table
        window = self.window

        def lookup(second: int) -> Bucket | None:
            data = table.get((room_id, window.current(float(second))))
            return bucket_from_table(data) if data else None

        return lookup

    def snapshots(self, now: float) -> list[tuple[int, RoomStats]]:
        """The snapshot of every live room in this worker's partitions, with its partition."""
        out = []
        for room_id, stored in list(self.gauges.items()):
            gauges = gauges_from_table(stored)
            if not gauges.configured or not is_live(gauges, now, 2 * self.settings.snapshot_interval_s):
                continue
            out.append((int(stored["partition"]), snapshot(room_id, gauges, self.bucket_lookup(room_id), now)))
        return out

    async def publish_snapshots(self, now: float) -> None:
        recovered = self.app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        if self.app.rebalancing or self.app.in_recovery or not recovered:
            return  # tables are partial until recovery ends: a snapshot now would understate counts
        for partition, stats in self.snapshots(now):
            # A snapshot sums up many visitors: its own trace, linked to the events it is the first to include.
            links = [Link(context) for context in self.unsnapshotted.pop(stats.room_id, ()) if context.is_valid]
            with tracer.start_as_current_span("stats snapshot", links=links, attributes=message_attributes(stats)):
                await self._send(self.room_stats, stats, partition)

    # ---------------------------------------------------------------- thresholds

    async def on_snapshot(self, event: EventT) -> None:
        message = await self._decoded(event, Message)
        if not isinstance(message, RoomStats):
            return
        with consume_span(as_record(event), self.settings.group, message):
            await self._evaluate(event, message)

    async def _evaluate(self, event: EventT, message: RoomStats) -> None:
        if time.time() - message.at > self.settings.alert_max_age_s:
            return  # an old snapshot replayed: alerting on it now would page about the past
        stored = self.alert_states.get(message.room_id) or {}
        if event.message.offset <= stored.get(OFFSET, -1):
            return
        rules = self.settings.rules_for(message.room_id)
        state, alerts = evaluate(rules, alert_state_from_table(stored), message, message.at)
        # Alerts first: a crash between the two repeats an alert (same alert_id) rather than losing it.
        for alert in alerts:
            await self._send(self.alerts_topic, alert, event.message.partition)
            log.info(
                "threshold_" + ("breached" if alert.TYPE.endswith("breached.v1") else "recovered"),
                room_id=alert.room_id,
                rule=alert.rule,
                value=alert.value,
                threshold=alert.threshold,
                alert_id=alert.alert_id,
            )
        self.alert_states[message.room_id] = {**alert_state_to_table(state), OFFSET: event.message.offset}

    # ---------------------------------------------------------------- output

    async def _send(self, topic: Any, message: Any, partition: int) -> None:
        with produce_span(topic.get_topic_name(), message, partition):
            record = encode(message, outgoing_headers())
            delivery = await topic.send(key=record.key, value=record.value, headers=record.headers, partition=partition)
        await delivery

    async def _decoded(self, event: EventT, kind: Accepts) -> Any:
        """The event's message, or None once a record that does not decode went to the dead letters."""
        message = decode_as(as_record(event), kind)
        if isinstance(message, BaseException):
            await self._dead_letter(event, message)
            return None
        return message

    async def _dead_letter(self, event: EventT, error: BaseException) -> None:
        """The platform's dead letter of the record, sent with faust's producer."""
        letter = dead_letter(as_record(event), error)
        dlq = self._raw_topic(letter.topic)
        delivery = await dlq.send(
            key=letter.key, value=letter.value, headers=letter.headers, partition=letter.partition
        )
        await delivery


class _RoomFold:
    """One room's share of a batch: its gauges and touched buckets, read once, folded in log order,
    each part at most once (the offsets of the module docstring), written once by :meth:`write`."""

    def __init__(self, stats: Stats, room_id: str) -> None:
        self.stats = stats
        self.room_id = room_id
        stored = stats.gauges.get(room_id) or {}
        self.gauges_offset: int = stored.get(OFFSET, -1)
        self.gauges = gauges_from_table(stored)
        self.gauges_changed = False
        #: window key -> [bucket, offset of the last event in it, changed]
        self.buckets: dict[Any, list[Any]] = {}
        self.event: EventT | None = None  # the room's latest event: its partition is the tables'

    def apply(self, message: Any, event: EventT) -> None:
        offset, self.event = event.message.offset, event
        if offset > self.gauges_offset:
            self.gauges = evolve_gauges(self.gauges, message)
            self.gauges_offset, self.gauges_changed = offset, True
        if counts_bucket(message):
            window_key = (self.room_id, self.stats.window.current(float(second_of(message.at))))
            entry = self.buckets.get(window_key)
            if entry is None:
                stored = self.stats.seconds.table.get(window_key) or {}
                entry = self.buckets[window_key] = [bucket_from_table(stored), stored.get(OFFSET, -1), False]
            if offset > entry[1]:
                issued_at = message.issued_at if isinstance(message, TicketAdmitted) else None
                entry[0], entry[1], entry[2] = add_to_bucket(entry[0], message, issued_at), offset, True

    def write(self) -> None:
        """Write the changed values, as if from the room's latest event: faust sends a table's
        changelog record to the partition of the event in hand, which must be the room's."""
        if self.event is None:
            return
        token = _current_event.set(weakref.ref(self.event))
        try:
            if self.gauges_changed:
                self.stats.gauges[self.room_id] = {
                    **gauges_to_table(self.gauges),
                    OFFSET: self.gauges_offset,
                    "partition": self.event.message.partition,
                }
            table = self.stats.seconds.table
            for window_key, (bucket, offset, changed) in self.buckets.items():
                if changed:
                    table[window_key] = {**bucket_to_table(bucket), OFFSET: offset}
        finally:
            _current_event.reset(token)


def _credentials(settings: StatsSettings) -> Any:
    """The platform's Kafka security settings in faust's shape (the same fields every service reads)."""
    kafka = settings.kafka
    if kafka.sasl_mechanism:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_secret,
            mechanism=kafka.sasl_mechanism,
            ssl_context=kafka.ssl_context(),
        )
    context = kafka.ssl_context()
    return None if context is None else faust.SSLCredentials(context)
