"""The sequencer: the single writer of every room in the partitions it owns.

It consumes ``waitroom.commands`` in a consumer group. For a partition it is assigned it first
fences any previous owner (a transactional producer with a per-partition id), rebuilds the rooms of
that partition by replaying ``room-events`` (read_committed), and resumes the commands exactly after
the last one applied. Each event it appends carries the offset of the command that caused it (the
``waitroom-source-offset`` header), so recovery needs nothing but the log: a crash at any moment
applies no command twice and loses none that was acknowledged.

Snapshots (docs/adr/0007) shorten the replay: every ``snapshot_every_events`` events or
``snapshot_every_s`` seconds, right after a transaction committed (so the rooms hold committed
events only), the rooms are encoded in the event loop and then compressed and written to the
compacted snapshots topic in the background, never inside a transaction of commands. A new owner
loads the newest valid snapshot and replays only the events after it; with none, or none that
checks out, it replays the whole partition as before.

Events go to the same partition number of ``room-events`` as their command: the topics are
co-partitioned, and so partition ``p`` of the log has exactly one writer.

In the all-in-one process the API also hands a join straight to this sequencer when it owns the
room's partition (``offer``, docs/adr/0011): the join is decided in the partition's next
transaction without being written to ``waitroom.commands`` and fetched back, and its events carry
no command offset. Anything the sequencer does not decide (the partition is not owned here, the
transaction failed) is published as a command by the API, and a join whose ticket the room knows
already decides nothing, so nothing is lost or doubled either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import InvalidSessionTimeoutError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from waitroom_core.room import InvalidCommand, RoomState, decide, evolve
from waitroom_core.snapshot import encode_rooms, frame
from waitroom_events.codec import DecodeError, EncodedRecord, decode, encode, header
from waitroom_events.commands import Command
from waitroom_events.events import RoomEvent, StateEvent
from waitroom_events.topics import TopicRegistry
from waitroom_platform import compat
from waitroom_platform.consume import ConsumerLoop, Poison, Record, read_to_end
from waitroom_platform.kafka import (
    HEADER_SOURCE_OFFSET,
    consume_span,
    handed_over_span,
    make_consumer,
    make_producer,
    make_reader,
    outgoing_headers,
    produce_span,
    queue_record_batches,
    send_to_dead_letter,
    trace_headers,
    tracing,
)
from waitroom_platform.metrics import track_consumer_lag
from waitroom_platform.runtime import Component, Misconfigured, OwnLoop
from waitroom_platform.settings import KafkaSettings
from waitroom_platform.snapshots import SnapshotStore, describe

log = structlog.get_logger()

#: how long a partition's recovery after a failed batch is retried (the broker restarting) before giving up
RECOVERY_RETRY_FOR_S = 120.0
#: record batches of the events appended at once (well under the broker's 1 MB message limit)
BATCH_BYTES = 512 * 1024
#: the group's committed offset trails the decided commands by at most about this (see OFFSETS below)
OFFSETS_EVERY_S = 1.0
#: the transactional producer's retry backoff (``AddOffsetsToTxn`` answered ``CONCURRENT_TRANSACTIONS``
#: among others), not aiokafka's 100 ms
TRANSACTION_RETRY_BACKOFF_MS = 5
#: ``AddPartitionsToTxn`` answered ``CONCURRENT_TRANSACTIONS`` (the previous transaction's markers
#: not written yet, a millisecond or two on a quiet broker) is retried after ``_SMALL_MS`` after a
#: small batch, after ``_LARGE_MS`` after a large one (ADR 0009, amendment). After a small
#: batch (low load) the next command's latency is what counts: at 5 ms a partition's transactions
#: could follow each other only every 5 ms or so, and sequential joins took p50 13.6-15.1 ms / p99
#: 36.8-50.6 ms against 12.0-12.2 / 27.5-32.4 ms at 1 ms (load average 2-3). After a large batch
#: (saturation) the wait lets the next batch grow: a sequencer applied 22,645-24,304 commands/s
#: at 5 ms against 19,755-21,780 at 1 ms, which retried more for smaller transactions.
CONCURRENT_RETRY_SMALL_MS = 1
CONCURRENT_RETRY_LARGE_MS = 5
#: a batch of at most this many commands is small
SMALL_BATCH = 16
#: transactional ids per partition every takeover fences, whatever ``SequencerOptions.transactional_ids``
#: uses: an owner of a version that uses both is fenced by one that uses only the first
FENCED_IDS = 2


def transactional_id(commands_topic: str, partition: int, index: int) -> str:
    """The ``index``-th transactional id of a partition's sequencer: ``<commands>.sequencer-<p>``
    (the only one before ADR 0009's amendment of 2026-12-02), then ``<commands>.sequencer-<p>.1``."""
    base = f"{commands_topic}.sequencer-{partition}"
    return base if index == 0 else f"{base}.{index}"


class LogTruncated(RuntimeError):
    """The log no longer holds the events recovery needs (a retention time without a snapshot)."""


class NotDecidedHere(Exception):
    """An offered command this sequencer did not decide: the room's partition is not owned here (or
    not yet, or no longer), or the sequencer is stopping. It goes through ``waitroom.commands``."""


class OutcomeUnknown(Exception):
    """The transaction that held an offered command failed: its events may or may not be in the
    log. Publishing the command is still safe: a join whose ticket the room knows decides nothing."""


#: the sequencer's answer to an offer, called on its loop: ``None`` once the command's events are
#: committed (and handed to the read model); else why not (NotDecidedHere, OutcomeUnknown, or the
#: InvalidCommand the decision raised): the command must then be published
Reply = Callable[[BaseException | None], None]


@dataclass(frozen=True)
class Offer:
    """A command handed to the sequencer by the API of its own process (docs/adr/0011)."""

    command: Command
    #: the trace context of the request (W3C headers), carried by the events it causes
    headers: Sequence[tuple[str, bytes]]
    reply: Reply


def _reply_all(offers: Sequence[Offer], error: BaseException | None) -> None:
    for offer in offers:
        offer.reply(error)


#: what the API calls to hand a command over: ``decide_locally(command, trace headers)`` is a
#: future of the sequencer's answer (see ``Reply``), or ``None`` when no sequencer runs here
LocalDecider = Callable[[Command, Sequence[tuple[str, bytes]]], "asyncio.Future[BaseException | None] | None"]


def decider_of(own_loop: OwnLoop) -> LocalDecider:
    """The API's side of ``Sequencer.offer`` across threads: the sequencer runs on a loop and thread
    of its own (``OwnLoop``), so the offer is queued onto that loop and the answer back onto the
    caller's, each with one ``call_soon_threadsafe``."""

    def decide_locally(
        command: Command, headers: Sequence[tuple[str, bytes]]
    ) -> asyncio.Future[BaseException | None] | None:
        sequencer = own_loop.inner
        if not isinstance(sequencer, Sequencer):
            return None
        here = asyncio.get_running_loop()
        answer: asyncio.Future[BaseException | None] = here.create_future()

        def reply(error: BaseException | None) -> None:  # on the sequencer's loop
            with contextlib.suppress(RuntimeError):  # the caller's loop closed: nobody waits
                here.call_soon_threadsafe(_settle, answer, error)

        if not own_loop.call_soon(sequencer.offer, Offer(command, tuple(headers), reply)):
            return None
        return answer

    return decide_locally


def _settle(answer: asyncio.Future[BaseException | None], error: BaseException | None) -> None:
    if not answer.done():
        answer.set_result(error)


@dataclass
class OwnedPartition:
    partition: int
    #: the transactional producers used in turn (one plain producer without transactions)
    producers: Sequence[AIOKafkaProducer]
    #: which of them writes the next transaction
    turn: int = 0
    rooms: dict[str, RoomState] = field(default_factory=dict)
    next_offset: int = 0
    events_replayed: int = 0
    #: events queued in the open transaction, not yet acknowledged
    #: (delivery, record count) of each record batch queued: the count places its last event
    deliveries: list[tuple[asyncio.Future[Any], int]] = field(default_factory=list)
    #: the open transaction's events, in log order (with a hand-off)
    committing: list[RoomEvent] = field(default_factory=list)
    #: room-events offset of the last event appended in the open transaction (with a hand-off)
    appended_upto: int | None = None
    #: room-events offset of the last event this owner committed; None until its first commit
    committed_upto: int | None = None
    #: a room-events offset at or before the first event not yet folded into ``rooms``
    events_floor: int = 0
    #: replay folds only events of commands from here on (the snapshot holds the earlier ones)
    replay_from: int = 0
    events_since_snapshot: int = 0
    snapshot_at: float = field(default_factory=time.monotonic)
    snapshot_id: int = 0
    #: the command offset last written to the group (in a transaction), and when
    offsets_sent: int = -1
    offsets_sent_at: float = field(default_factory=time.monotonic)
    #: seconds from the start of the takeover (fencing) to the rooms rebuilt
    recovery_s: float = 0.0
    #: the rooms being encoded for a snapshot in a worker thread: no command is decided until it ends
    encoding: asyncio.Task[Any] | None = None

    @property
    def producer(self) -> AIOKafkaProducer:
        """The producer of the open (or the next) transaction."""
        return self.producers[self.turn]

    def committed(self) -> None:
        """A transaction committed: the next one goes to the other transactional id, which need not
        wait for this one's markers (ADR 0009, amendment of 2026-12-02)."""
        self.turn = (self.turn + 1) % len(self.producers)


@dataclass(frozen=True)
class SequencerOptions:
    group_id: str
    transactional: bool = True
    #: commands decided and committed per transaction at most (a fetch's worth under load)
    max_batch: int = 5000
    #: a snapshot after this many events (0: no snapshots, neither written nor read)
    snapshot_every_events: int = 0
    #: ... or after this many seconds with at least one event
    snapshot_every_s: float = 60.0
    #: ended tickets older than this (before their room's newest event) are left out of snapshots
    #: and forgotten by the rooms (tombstones: docs/adr/0008-columnar-room-state.md)
    snapshot_keep_ended_s: float | None = 600.0
    #: the group's session timeout: how long a dead sequencer holds its partitions (docs/adr/0007)
    session_timeout_ms: int = 3_000
    #: transactional ids a partition's transactions alternate between (1 or 2; ADR 0009): with two,
    #: a transaction does not wait for the previous one's commit markers
    transactional_ids: int = 2

    @property
    def heartbeat_interval_ms(self) -> int:
        """A sixth of the session: the survivors hear of a rebalance on their next heartbeat (half
        an interval on average, part of every failover), and the event loop may stall for the
        session less one interval (2.5 s of a 3 s session) before the member is taken for dead."""
        return max(100, self.session_timeout_ms // 6)


#: ``committed(partition, after, upto, events)``: ``events`` are now in the log (their transaction
#: committed), the partition's room-events from just after offset ``after`` (this owner's previous
#: commit) up to ``upto``. Called on the sequencer's loop; see ReadModel.take_committed.
Committed = Callable[[int, int, int, Sequence[RoomEvent]], None]


class Sequencer(Component):
    name = "sequencer"

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: TopicRegistry,
        options: SequencerOptions,
        clock: Callable[[], float] = time.time,
        committed: Committed | None = None,
    ) -> None:
        self._kafka = kafka
        self._topics = topics
        self._options = options
        self._clock = clock
        self._hand_off_to = committed
        self._owned: dict[int, OwnedPartition] = {}
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._plain_producer: AIOKafkaProducer | None = None
        self._untrack_lag: Callable[[], None] | None = None
        self._snapshots = SnapshotStore(kafka, topics.snapshots.name) if options.snapshot_every_events > 0 else None
        self._snapshot_timer: asyncio.Task[None] | None = None
        self._offsets_timer: asyncio.Task[None] | None = None
        #: the snapshot being written per partition, kept across a release and a new assignment
        self._writing: dict[int, asyncio.Task[None]] = {}
        self._failure: BaseException | None = None
        #: the takeovers of the latest assignment, run outside the group's callback (see assign)
        self._takeover: asyncio.Task[None] | None = None
        self._failed = asyncio.Event()
        self._commands: _CommandLoop | None = None
        #: commands handed over by the API of this process, per partition, not decided yet (``offer``)
        self._offers: dict[int, list[Offer]] = {}
        self._offered = asyncio.Event()
        self._deciding: asyncio.Task[None] | None = None
        self._stopping = False
        #: set once the group gave this member its partitions (possibly none)
        self.joined = asyncio.Event()

    # ---------------------------------------------------------------- lifecycle

    def ready(self) -> bool:
        return self.joined.is_set()

    async def start(self) -> None:
        if self._options.transactional:
            compat.shorten_transaction_retry(CONCURRENT_RETRY_SMALL_MS / 1000)
        consumer = make_consumer(
            self._kafka,
            group_id=self._options.group_id,
            # records are answered at once whatever the wait (see make_consumer); 100 ms, not 500,
            # bounds how long an idle fetch can hold up the first one after a seek
            fetch_max_wait_ms=100,
            max_poll_records=self._options.max_batch,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=self._options.session_timeout_ms,
            heartbeat_interval_ms=self._options.heartbeat_interval_ms,
            rebalance_timeout_ms=30_000,
        )
        self._consumer = consumer
        if not self._options.transactional:
            self._plain_producer = make_producer(self._kafka)
            await self._plain_producer.start()
        else:
            self._offsets_timer = asyncio.get_running_loop().create_task(self._offsets_on_time())
        if self._snapshots is not None:
            await self._snapshots.start()
            self._snapshot_timer = asyncio.get_running_loop().create_task(self._snapshot_on_time())
        self._deciding = asyncio.get_running_loop().create_task(self._decide_offered())
        await consumer.start()
        consumer.subscribe([self._topics.commands.name], listener=_Rebalance(self))
        self._untrack_lag = track_consumer_lag(consumer, self._options.group_id)
        log.info("sequencer_started", group=self._options.group_id, transactional=self._options.transactional)

    async def run(self) -> None:
        assert self._consumer is not None
        self._commands = _CommandLoop(self, self._consumer)
        commands = asyncio.get_running_loop().create_task(self._commands.run())
        failed = asyncio.get_running_loop().create_task(self._failed.wait())
        try:
            await asyncio.wait({commands, failed}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            commands.cancel()
            raise
        finally:
            failed.cancel()
        if self._failure is not None:
            commands.cancel()
            raise self._failure  # from a takeover, which runs outside the command loop
        try:
            await commands
        except InvalidSessionTimeoutError as exc:
            raise session_refused(self._options.session_timeout_ms) from exc

    async def stop(self) -> None:
        self._stopping = True
        if self._untrack_lag is not None:
            self._untrack_lag()
        for timer in (self._snapshot_timer, self._offsets_timer):
            if timer is not None:
                timer.cancel()
        if self._deciding is not None:
            self._deciding.cancel()  # an offer in a transaction is answered OutcomeUnknown
            await asyncio.wait({self._deciding})
        offers, self._offers = self._offers, {}
        for pending in offers.values():
            _reply_all(pending, NotDecidedHere("the sequencer is stopping"))
        await self._cancel_takeover()
        async with self._lock:
            for writing in self._writing.values():
                writing.cancel()  # half a snapshot is never read (docs/adr/0007)
            for owned in self._owned.values():
                await self._release(owned, quiet=False)
            self._owned.clear()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._plain_producer is not None:
            await self._plain_producer.stop()
        if self._snapshots is not None:
            await self._snapshots.stop()

    # ---------------------------------------------------------------- ownership

    async def assign(self, partitions: set[TopicPartition]) -> None:
        """The group's assignment callback: it only pauses the new partitions and starts their takeover.

        aiokafka sends no heartbeats while this callback runs, and the broker expires a member
        whose callback outlasts the session timeout; the member then rejoins, is given the same
        partitions and starts the takeover over. A takeover longer than the session (a long replay
        without a snapshot, a large snapshot) would never end. So the takeovers run in a task of
        their own, the group keeps hearing from this member, and each partition is resumed once
        it is owned (fenced, rebuilt, positioned after the last command applied).
        """
        await self._cancel_takeover()
        assert self._consumer is not None
        new = sorted((tp for tp in partitions if tp.partition not in self._owned), key=lambda t: t.partition)
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in partitions))
        if not new:
            self.joined.set()  # joined the group (possibly with no partition: more members than partitions)
            return
        self._consumer.pause(*new)
        self._takeover = asyncio.get_running_loop().create_task(self._take_over(new))

    async def _take_over(self, partitions: Sequence[TopicPartition]) -> None:
        assert self._consumer is not None
        for tp in partitions:
            try:
                owned = await self._take_ownership_retrying(tp)
            except LogTruncated as exc:
                log.error("room_events_truncated", partition=tp.partition, error=str(exc))
                self._fail(exc)
                return
            except Exception as exc:  # noqa: BLE001 - retried already: the component fails, the process exits
                log.error("partition_takeover_failed", partition=tp.partition, error=repr(exc))
                self._fail(exc)
                return
            try:
                async with self._lock:
                    self._own(tp, owned)
            except BaseException:
                await self._release(owned)  # revoked before it was installed
                raise
            self._consumer.resume(tp)
        self.joined.set()

    async def _cancel_takeover(self) -> None:
        """Ends the takeovers still running (a revoke, a new assignment, stop)."""
        takeover, self._takeover = self._takeover, None
        if takeover is not None and not takeover.done():
            takeover.cancel()
            await asyncio.wait({takeover})

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._failed.set()

    async def _release(self, owned: OwnedPartition, *, quiet: bool = True) -> None:
        """Stops the partition's own producers (not the shared plain one); ``quiet``: a failure to
        stop one is ignored (a takeover or a batch that failed already), else it is raised."""
        for producer in owned.producers:
            if producer is self._plain_producer:
                continue
            if quiet:
                with contextlib.suppress(Exception):
                    await producer.stop()
            else:
                await producer.stop()

    async def revoke(self, partitions: set[TopicPartition]) -> None:
        await self._cancel_takeover()
        async with self._lock:
            for tp in partitions:
                self._drop_read_ahead(tp)
                owned = self._owned.pop(tp.partition, None)
                if owned is not None:
                    await self._release(owned, quiet=False)
                log.info("partition_released", partition=tp.partition)

    async def _take_ownership_retrying(self, tp: TopicPartition) -> OwnedPartition:
        """:meth:`_take_ownership`, retried (0.5 s doubling to 5 s) for up to ``RECOVERY_RETRY_FOR_S``
        while it fails (the broker restarting); a truncated log is not retried."""
        deadline = time.monotonic() + RECOVERY_RETRY_FOR_S
        delay = 0.5
        while True:
            try:
                return await self._take_ownership(tp)
            except LogTruncated:
                raise
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("partition_recovery_retry", partition=tp.partition, error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _take_ownership(self, tp: TopicPartition) -> OwnedPartition:
        """Fences the partition's earlier owners and rebuilds its rooms; :meth:`_own` installs it."""
        started = time.monotonic()
        if self._options.transactional:
            # Starting a producer with a transactional id fences every earlier owner of the
            # partition that used it and aborts its open transaction, before we read the log it
            # wrote. Both ids are fenced, whichever this owner uses (see FENCED_IDS).
            producers = [
                make_producer(
                    self._kafka,
                    transactional_id=transactional_id(self._topics.commands.name, tp.partition, index),
                    linger_ms=0,
                    max_batch_size=BATCH_BYTES,
                    retry_backoff_ms=TRANSACTION_RETRY_BACKOFF_MS,
                )
                for index in range(FENCED_IDS)
            ]
        else:
            assert self._plain_producer is not None
            producers = [self._plain_producer]
        owned = OwnedPartition(partition=tp.partition, producers=producers)
        try:
            if self._options.transactional:
                # together (a takeover's time is a failover's), each finished before any is released
                starts = [producer.start() for producer in producers]
                started_all = await asyncio.gather(*starts, return_exceptions=True)
                for outcome in started_all:
                    if isinstance(outcome, BaseException):
                        raise outcome
                unused = producers[self._options.transactional_ids :]
                owned.producers = producers[: self._options.transactional_ids]
                for producer in unused:
                    await producer.stop()  # fenced: its epoch stays raised at the coordinator
            await self._rebuild(owned)
            committed = await self._committed(tp)
        except BaseException:
            await self._release(owned)  # a failed takeover leaves no transactional producer behind
            raise
        owned.next_offset = max(owned.next_offset, committed)
        owned.recovery_s = time.monotonic() - started
        return owned

    def _own(self, tp: TopicPartition, owned: OwnedPartition) -> None:
        """Installs a rebuilt partition (under ``_lock``): its commands resume after the last one applied."""
        assert self._consumer is not None
        self._consumer.seek(tp, owned.next_offset)
        self._drop_read_ahead(tp)
        self._owned[tp.partition] = owned
        log.info(
            "partition_owned",
            partition=tp.partition,
            rooms=len(owned.rooms),
            events_replayed=owned.events_replayed,
            resume_offset=owned.next_offset,
            recovery_s=round(owned.recovery_s, 3),
        )
        owned.events_since_snapshot = owned.events_replayed
        self.maybe_snapshot(owned)

    def _drop_read_ahead(self, tp: TopicPartition) -> None:
        """Commands of ``tp`` fetched ahead from before a seek (a takeover, a revoke) are not read."""
        if self._commands is not None and self._commands.read_ahead is not None:
            self._commands.read_ahead.drop(tp)

    async def _committed(self, tp: TopicPartition) -> int:
        assert self._consumer is not None
        try:
            offset = await self._consumer.committed(tp)
        except Exception:  # noqa: BLE001 - the log is authoritative; the commit is only a hint
            return 0
        return offset or 0

    async def _rebuild(self, owned: OwnedPartition) -> None:
        """The newest valid snapshot, then the partition's room-events after it (all of them
        without one): the rooms' state and the next command to apply."""
        start = 0
        if self._snapshots is not None:
            writing = self._writing.get(owned.partition)
            if writing is not None:
                # Ours, from before a rebalance took the partition away and gave it back: without
                # waiting, the load would miss it and replay everything it covers.
                await asyncio.wait({writing}, timeout=30)
            found = await self._snapshots.load(owned.partition)
            owned.snapshot_id = found.next_id
            if found.loaded is not None:
                manifest = found.loaded.manifest
                owned.rooms = found.loaded.rooms
                for room in owned.rooms.values():
                    room.keep_ended_s = self._options.snapshot_keep_ended_s  # forgotten as in the fold
                owned.next_offset = owned.replay_from = manifest.next_offset
                start = manifest.events_offset
            log.info("snapshot_found", partition=owned.partition, events_offset=start, **describe(found))
        events_tp = TopicPartition(self._topics.room_events.name, owned.partition)
        reader = make_reader(self._kafka)
        await reader.start()
        try:
            first = (await reader.beginning_offsets([events_tp]))[events_tp]
            if first > start:
                # room-events has a retention time and lost what the snapshot (or its absence) needs:
                # replaying what is left would build wrong rooms. Refuse to own the partition.
                raise LogTruncated(
                    f"room-events partition {owned.partition} starts at offset {first}, recovery needs {start}: "
                    "no valid snapshot covers the retained log (docs/adr/0007-snapshots-compaction-retention.md)"
                )
            owned.events_floor = await read_to_end(
                reader, events_tp, lambda record: self._replay(owned, record), start, max_records=5000
            )
        finally:
            await reader.stop()

    def _replay(self, owned: OwnedPartition, record: ConsumerRecord[Any, Any]) -> None:
        source = header(record.headers, HEADER_SOURCE_OFFSET)
        if source is not None and int(source) < owned.replay_from:
            return  # folded into the snapshot already
        try:
            event = decode(record.value, record.headers)
        except DecodeError as exc:
            log.error("room_event_undecodable", partition=record.partition, offset=record.offset, error=str(exc))
            return
        if isinstance(event, StateEvent):
            room = owned.rooms.get(event.room_id)
            if room is None:
                room = owned.rooms[event.room_id] = RoomState(event.room_id, self._options.snapshot_keep_ended_s)
            evolve(room, event)
            owned.events_replayed += 1
            if not room.exists:
                del owned.rooms[event.room_id]  # archived
        source = header(record.headers, HEADER_SOURCE_OFFSET)
        if source is not None:
            owned.next_offset = max(owned.next_offset, int(source) + 1)

    # ---------------------------------------------------------------- applying commands

    async def _decide_and_append(
        self, owned: OwnedPartition, commands: Sequence[tuple[Record, Command]]
    ) -> list[Poison]:
        """Decide each command in log order and append its events; returns the commands refused.

        The events of the whole chunk go to the log as few record batches (one per ~1 MB), not
        one ``send`` per event: at 20,000 commands/s the per-record producer path was most of the
        sequencer's time. With tracing on, each command also gets its CONSUMER span and each
        event the trace context of that span; without, the command's own trace headers are
        passed on as they came, so a trace still crosses the sequencer.
        """
        refused: list[Poison] = []
        encoded: list[EncodedRecord] = []
        now = self._clock()
        traced = tracing()
        for record, command in commands:
            if traced:
                with consume_span(record, self._options.group_id, command) as span:
                    events = self._decide_one(owned, record, command, refused, now)
                    span.set_attribute("waitroom.events", -1 if events is None else len(events))
                    if events is None:
                        span.set_attribute("waitroom.dead_lettered", True)
                        continue
                    if self._hand_off_to is not None:
                        owned.committing.extend(events)
                    source = [(HEADER_SOURCE_OFFSET, str(record.offset).encode())]
                    for event in events:
                        # a PRODUCER span per event, each event carrying its own span's context
                        with produce_span(self._topics.room_events.name, event, owned.partition):
                            encoded.append(encode(event, outgoing_headers(source)))
                continue
            else:
                events = self._decide_one(owned, record, command, refused, now)
                if events is None:
                    continue
                if self._hand_off_to is not None:
                    owned.committing.extend(events)
                extra = [(HEADER_SOURCE_OFFSET, str(record.offset).encode()), *trace_headers(record.headers)]
            for event in events:
                encoded.append(encode(event, extra))
        if encoded:
            owned.events_since_snapshot += len(encoded)
            owned.deliveries.extend(
                await queue_record_batches(owned.producer, self._topics.room_events.name, owned.partition, encoded)
            )
            # with transactions: awaited together with the offsets' request (see _CommandLoop.commit),
            # one round trip less
            if not self._options.transactional:
                await _delivered_all(owned)
        return refused

    def _decide_one(
        self,
        owned: OwnedPartition,
        record: Record,
        command: Command,
        refused: list[Poison],
        now: float,
    ) -> list[RoomEvent] | None:
        """The events of one command, already folded into its room; ``None`` if it is refused."""
        try:
            events = self._fold(owned, command, now)
        except InvalidCommand as exc:
            refused.append((record, exc))
            return None
        owned.next_offset = record.offset + 1
        return events

    def _fold(self, owned: OwnedPartition, command: Command, now: float) -> list[RoomEvent]:
        """The events of one command, folded into its room; raises InvalidCommand (nothing changed)."""
        room = owned.rooms.get(command.room_id)
        if room is None:
            room = RoomState(command.room_id, self._options.snapshot_keep_ended_s)
        events = decide(room, command, now)
        for event in events:
            evolve(room, event)
        if room.exists:
            owned.rooms.setdefault(command.room_id, room)
        else:
            owned.rooms.pop(command.room_id, None)  # archived (or never created)
        return events

    # ---------------------------------------------------------------- commands handed over (ADR 0011)

    def offer(self, offer: Offer) -> None:
        """A command from the API of this process, on this sequencer's loop (see ``decider_of``).

        If this sequencer owns the partition that holds the command's room, the command is decided
        in that partition's next transaction of offers, with every other offer that arrived
        meanwhile, and ``offer.reply(None)`` once it committed: the command never goes through
        ``waitroom.commands``, which saves its produce and the sequencer's fetch (two of a join's
        round trips). Otherwise the reply is NotDecidedHere at once, and the API publishes it.
        """
        if self._stopping:
            offer.reply(NotDecidedHere("the sequencer is stopping"))
            return
        room_id = offer.command.room_id
        partition = next((p for p, owned in self._owned.items() if room_id in owned.rooms), None)
        if partition is None:
            offer.reply(NotDecidedHere(f"room {room_id!r} is not in a partition this sequencer owns"))
            return
        self._offers.setdefault(partition, []).append(offer)
        self._offered.set()

    async def _decide_offered(self) -> None:
        """Decides the offers, each partition's pending ones in one transaction. One pass per wake:
        the lock is then released, so a batch of ``waitroom.commands`` waiting for it goes next."""
        while True:
            await self._offered.wait()
            self._offered.clear()
            async with self._lock:
                pending, self._offers = self._offers, {}
                for partition, offers in pending.items():
                    owned = self._owned.get(partition)
                    if owned is None:  # revoked (or failed) since it was offered
                        _reply_all(offers, NotDecidedHere(f"partition {partition} is no longer owned here"))
                        continue
                    await self._commit_offers(owned, offers)

    async def _commit_offers(self, owned: OwnedPartition, offers: Sequence[Offer]) -> None:
        """Decide ``offers`` in the order they came, append their events and commit them (one
        transaction), hand them to the read model, then answer each offer."""
        if owned.encoding is not None:
            await asyncio.wait({owned.encoding})  # the snapshot's thread reads these rooms
            owned.encoding = None
        refused: dict[int, InvalidCommand] = {}
        try:
            encoded = self._decide_offers(owned, offers, refused)
            if encoded:
                owned.events_since_snapshot += len(encoded)
                if self._options.transactional:
                    async with owned.producer.transaction():
                        try:
                            await self._append(owned, encoded)
                        finally:
                            owned.deliveries.clear()
                    owned.committed()
                else:
                    await self._append(owned, encoded)
        except Exception:  # noqa: BLE001 - any failure: the log decides what happened
            owned.committing.clear()
            _reply_all(offers, OutcomeUnknown("the transaction failed; the partition is rebuilt from the log"))
            await self._recover_after_failure(owned, TopicPartition(self._topics.commands.name, owned.partition))
            return
        except BaseException:
            _reply_all(offers, OutcomeUnknown("the sequencer stopped during the transaction"))
            raise
        self._hand_off(owned)
        for index, offer in enumerate(offers):
            offer.reply(refused.get(index))
        if self._options.transactional:
            small = len(offers) <= SMALL_BATCH  # see CONCURRENT_RETRY_SMALL_MS
            compat.shorten_transaction_retry((CONCURRENT_RETRY_SMALL_MS if small else CONCURRENT_RETRY_LARGE_MS) / 1000)
        self.maybe_snapshot(owned)

    def _decide_offers(
        self, owned: OwnedPartition, offers: Sequence[Offer], refused: dict[int, InvalidCommand]
    ) -> list[EncodedRecord]:
        """The encoded events of ``offers``, folded into the rooms; a refused offer's index goes
        into ``refused`` (the API then publishes it, and the command path dead-letters it).
        Without a command record the events name no command offset: recovery needs none, because
        a join that is decided again (published after an unknown outcome) decides nothing."""
        encoded: list[EncodedRecord] = []
        now = self._clock()
        events_topic = self._topics.room_events.name
        traced = tracing()
        for index, offer in enumerate(offers):
            if traced:
                with handed_over_span(
                    self._topics.commands.name, owned.partition, self._options.group_id, offer.command, offer.headers
                ) as span:
                    try:
                        events = self._fold(owned, offer.command, now)
                    except InvalidCommand as exc:
                        refused[index] = exc
                        span.set_attribute("waitroom.refused", True)
                        continue
                    span.set_attribute("waitroom.events", len(events))
                    for event in events:
                        with produce_span(events_topic, event, owned.partition):
                            encoded.append(encode(event, outgoing_headers()))
            else:
                try:
                    events = self._fold(owned, offer.command, now)
                except InvalidCommand as exc:
                    refused[index] = exc
                    continue
                encoded.extend(encode(event, offer.headers) for event in events)
            if self._hand_off_to is not None:
                owned.committing.extend(events)
        return encoded

    async def _append(self, owned: OwnedPartition, encoded: Sequence[EncodedRecord]) -> None:
        """Queue ``encoded`` on the partition's room-events and wait until the broker has them all."""
        owned.deliveries.extend(
            await queue_record_batches(owned.producer, self._topics.room_events.name, owned.partition, encoded)
        )
        await _delivered_all(owned)

    # ---------------------------------------------------------------- snapshots

    def _hand_off(self, owned: OwnedPartition) -> None:
        """Hand the events of the transaction just committed to ``committed`` (the read model of
        this process, which then answers a join without waiting to fetch them: ADR 0009). Only a
        commit whose events follow this owner's previous one is handed off, so a taker can tell
        whether it holds everything before them; the first commit after a takeover is not."""
        events, owned.committing = owned.committing, []
        upto, owned.appended_upto = owned.appended_upto, None
        if not events:
            return
        after, owned.committed_upto = owned.committed_upto, upto
        if self._hand_off_to is not None and after is not None and upto is not None:
            self._hand_off_to(owned.partition, after, upto, events)

    def maybe_snapshot(self, owned: OwnedPartition) -> None:
        """Start a snapshot of ``owned`` if one is due and none is being written.

        Called between transactions, where the rooms hold exactly the committed events. The rooms
        are encoded in a worker thread while the partition's next batch waits for it
        (``OwnedPartition.encoding``): the only part that holds up the partition (measured in
        docs/benchmarks.md), and in the thread it holds up neither the event loop's group
        heartbeats nor the API of the same process. Compressing (zlib releases the GIL) and sending
        run in the background.
        """
        options = self._options
        if self._snapshots is None or owned.events_since_snapshot == 0:
            return
        writing = self._writing.get(owned.partition)
        if writing is not None and not writing.done():
            return
        if (
            owned.events_since_snapshot < options.snapshot_every_events
            and time.monotonic() - owned.snapshot_at < options.snapshot_every_s
        ):
            return
        rooms = list(owned.rooms.values())
        keep_ended_s = options.snapshot_keep_ended_s

        def encode() -> tuple[bytes, int, float]:
            started = time.perf_counter()
            body, count = encode_rooms(rooms, keep_ended_s)
            return body, count, time.perf_counter() - started

        loop = asyncio.get_running_loop()
        encoding = owned.encoding = loop.create_task(asyncio.to_thread(encode))
        taken_at = max((room.last_event_at or 0.0 for room in rooms), default=0.0)
        snapshot = dict(
            partition=owned.partition,
            snapshot_id=owned.snapshot_id,
            next_offset=owned.next_offset,
            events_offset=owned.events_floor,
            taken_at=taken_at,
        )
        owned.snapshot_id += 1
        owned.events_since_snapshot = 0
        owned.snapshot_at = time.monotonic()
        self._writing[owned.partition] = loop.create_task(self._write_snapshot(encoding, snapshot))

    async def _write_snapshot(self, encoding: asyncio.Task[tuple[bytes, int, float]], snapshot: dict[str, Any]) -> None:
        assert self._snapshots is not None
        try:
            body, rooms, encode_s = await encoding
            snapshot["rooms"] = rooms
            started = time.perf_counter()
            framed = await asyncio.to_thread(lambda: frame(body, **snapshot))
            framed_s = time.perf_counter() - started
            await self._snapshots.write(framed)
        except Exception:  # noqa: BLE001 - a snapshot is an optimisation: the log still holds everything
            log.warning("snapshot_failed", partition=snapshot["partition"], exc_info=True)
            return
        log.info(
            "snapshot_written",
            partition=snapshot["partition"],
            snapshot=snapshot["snapshot_id"],
            rooms=snapshot["rooms"],
            next_offset=snapshot["next_offset"],
            events_offset=snapshot["events_offset"],
            body_bytes=len(body),
            bytes=framed.manifest.compressed_bytes,
            chunks=framed.manifest.chunks,
            encode_ms=round(encode_s * 1000, 1),
            compress_ms=round(framed_s * 1000, 1),
            write_ms=round((time.perf_counter() - started - framed_s) * 1000, 1),
        )

    async def send_offsets(self, owned: OwnedPartition, tp: TopicPartition) -> None:
        """Put the partition's next command offset into the open transaction."""
        offset = owned.next_offset
        await owned.producer.send_offsets_to_transaction({tp: OffsetAndMetadata(offset, "")}, self._options.group_id)
        owned.offsets_sent, owned.offsets_sent_at = offset, time.monotonic()

    async def _offsets_on_time(self) -> None:
        """The offsets of partitions whose last commands did not send them (see ``_CommandLoop.commit``),
        in a transaction of their own, once the partition has been quiet for ``OFFSETS_EVERY_S``."""
        commands = self._topics.commands.name
        while True:
            await asyncio.sleep(OFFSETS_EVERY_S / 2)
            async with self._lock:
                for owned in list(self._owned.values()):
                    quiet = time.monotonic() - owned.offsets_sent_at >= OFFSETS_EVERY_S
                    if owned.next_offset == owned.offsets_sent or not quiet:
                        continue
                    try:
                        async with owned.producer.transaction():
                            await self.send_offsets(owned, TopicPartition(commands, owned.partition))
                        owned.committed()
                    except Exception as exc:  # noqa: BLE001 - only a hint for lag monitors: the next try sends it
                        log.warning("sequencer_offsets_failed", partition=owned.partition, error=repr(exc))

    async def _snapshot_on_time(self) -> None:
        """Snapshots of quiet partitions too: a partition that stopped getting commands is
        snapshotted ``snapshot_every_s`` after its last one."""
        while True:
            await asyncio.sleep(min(5.0, self._options.snapshot_every_s))
            async with self._lock:
                for owned in list(self._owned.values()):
                    self.maybe_snapshot(owned)

    async def _recover_after_failure(self, owned: OwnedPartition, tp: TopicPartition) -> None:
        """The in-memory rooms may be ahead of what the log kept: rebuild them from the log."""
        log.exception("sequencer_batch_failed", partition=owned.partition)
        self._owned.pop(owned.partition, None)
        await self._release(owned)
        # The broker may be down for a while (a restart): the takeover is retried until it is back,
        # so a Kafka restart costs a pause, not the process. Past the bound the component fails
        # and the process exits for its supervisor to restart.
        self._own(tp, await self._take_ownership_retrying(tp))


class _CommandLoop(ConsumerLoop[Command]):
    """The consumer skeleton over ``waitroom.commands``; a fetched batch of a partition is decided
    as one chunk and, with transactions, appended and committed in one Kafka transaction (its dead
    letters too), so the log holds all of a batch's effects or none."""

    def __init__(self, sequencer: Sequencer, consumer: AIOKafkaConsumer) -> None:
        super().__init__(
            consumer,
            Command,
            self._hand_over,
            max_records=sequencer._options.max_batch,
            fetch_timeout_ms=200,
            # the commands behind a batch are fetched while its transaction commits: at low load a
            # command then waits for at most one transaction before its own (ReadAhead)
            read_ahead=2 * sequencer._options.max_batch,
            name="sequencer",
        )
        self._sequencer = sequencer
        self._owned: OwnedPartition | None = None
        #: the chunk being committed had dead letters (its offset then goes into the transaction)
        self._poisoned = False

    async def process(self, tp: TopicPartition, records: Sequence[Record]) -> bool:
        sequencer = self._sequencer
        async with sequencer._lock:
            owned = sequencer._owned.get(tp.partition)
            if owned is None:
                return True  # revoked while the batch was in flight
            records = [r for r in records if r.offset >= owned.next_offset]
            if not records:
                return True
            if owned.encoding is not None:
                await asyncio.wait({owned.encoding})  # the snapshot's thread reads these rooms
                owned.encoding = None
            self._owned = owned
            try:
                if sequencer._options.transactional:
                    async with owned.producer.transaction():
                        try:
                            handled = await super().process(tp, records)
                            await self._delivered(owned)  # before the commit (aiokafka does not flush)
                        finally:
                            owned.deliveries.clear()
                    owned.committed()
                else:
                    handled = await super().process(tp, records)
            except Exception:  # noqa: BLE001 - any failure: the log decides what happened
                owned.committing.clear()
                await sequencer._recover_after_failure(owned, tp)
                return True
            finally:
                self._owned = None
            sequencer._hand_off(owned)
            if sequencer._options.transactional:
                # the next transaction's wait for this one's markers (see CONCURRENT_RETRY_SMALL_MS)
                small = len(records) <= SMALL_BATCH
                retry_ms = CONCURRENT_RETRY_SMALL_MS if small else CONCURRENT_RETRY_LARGE_MS
                compat.shorten_transaction_retry(retry_ms / 1000)
            sequencer.maybe_snapshot(owned)  # committed: the rooms hold nothing the log may lose
            return handled

    async def _hand_over(self, tp: TopicPartition, commands: Sequence[tuple[Record, Command]]) -> list[Poison]:
        assert self._owned is not None
        return await self._sequencer._decide_and_append(self._owned, commands)

    @staticmethod
    async def _delivered(owned: OwnedPartition) -> None:
        await _delivered_all(owned)

    async def dead_letter(self, tp: TopicPartition, poison: Sequence[Poison]) -> None:
        assert self._owned is not None
        self._poisoned = True
        deliveries = [await send_to_dead_letter(self._owned.producer, record, error) for record, error in poison]
        await asyncio.gather(*deliveries)

    async def commit(self, tp: TopicPartition, offset: int) -> bool:
        """OFFSETS: with transactions, the command offset goes into the transaction only when it
        must, not into every one. Recovery does not need it: every event names the offset of its
        command (``HEADER_SOURCE_OFFSET``) and a new owner resumes after the last one it replays
        (``_replay``). The commands after that produced no event, so deciding them again on the same
        rooms produces none again: nothing is lost or doubled. What the offset does buy: dead
        letters are not written twice (a batch with poison always sends its offset), and the
        group's committed offset, which lag monitors read, stays within ``OFFSETS_EVERY_S`` (a quiet
        partition's offset is sent by ``_offsets_on_time``). Sending it costs two more round trips
        per transaction (AddOffsetsToTxn, TxnOffsetCommit) and, right after a commit, a
        ``CONCURRENT_TRANSACTIONS`` retry: at low load that was most of a join's latency."""
        owned = self._owned
        assert owned is not None
        owned.next_offset = max(owned.next_offset, offset)
        sequencer = self._sequencer
        if not sequencer._options.transactional:
            await self.consumer.commit({tp: owned.next_offset})
            return True
        poisoned, self._poisoned = self._poisoned, False
        if poisoned or time.monotonic() - owned.offsets_sent_at >= OFFSETS_EVERY_S:
            await asyncio.gather(sequencer.send_offsets(owned, tp), self._delivered(owned))
        else:
            await self._delivered(owned)
        return True


async def _delivered_all(owned: OwnedPartition) -> None:
    batches, owned.deliveries = owned.deliveries, []
    if batches:
        delivered = await asyncio.gather(*(delivery for delivery, _ in batches))
        _note_delivered(owned, delivered, [count for _, count in batches])
        last = delivered[-1]
        if last is not None and last.offset >= 0:
            owned.appended_upto = last.offset + batches[-1][1] - 1


def _note_delivered(owned: OwnedPartition, delivered: Sequence[Any], counts: Sequence[int]) -> None:
    """Raise the events floor to just after the last event appended: every event before it is
    folded into the rooms, so a snapshot taken now holds exactly the events before its
    ``events_offset``. (It was the last batch's base offset, and replay skipped that batch's
    events by their command offset. An event of a handed-over join names no command offset, so
    replay from such a floor would fold it a second time; ``evolve`` tolerates that, but the
    exact floor does not lean on it: docs/adr/0011.)"""
    ends = [
        metadata.offset + count
        for metadata, count in zip(delivered, counts, strict=True)
        if metadata is not None and metadata.offset >= 0
    ]
    if ends:
        owned.events_floor = max(owned.events_floor, *ends)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, sequencer: Sequencer) -> None:
        self._sequencer = sequencer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._sequencer.revoke(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._sequencer.assign(assigned)


def session_refused(session_timeout_ms: int) -> Misconfigured:
    """The broker refused the group's session timeout (``INVALID_SESSION_TIMEOUT``): it lies outside
    the cluster's ``group.min.session.timeout.ms`` .. ``group.max.session.timeout.ms``. No retry
    can fix that, so the process exits (code 2) saying which setting to change."""
    log.error(
        "sequencer_session_timeout_refused",
        session_timeout_ms=session_timeout_ms,
        setting="WAITROOM_TICKETING_SESSION_TIMEOUT_MS",
        broker_settings="group.min.session.timeout.ms, group.max.session.timeout.ms",
    )
    return Misconfigured(
        f"the Kafka cluster refused the sequencer group's session timeout of {session_timeout_ms} ms "
        "(INVALID_SESSION_TIMEOUT): set WAITROOM_TICKETING_SESSION_TIMEOUT_MS within the brokers' "
        "group.min.session.timeout.ms and group.max.session.timeout.ms, or lower the brokers' "
        "group.min.session.timeout.ms (docs/adr/0007-snapshots-compaction-retention.md)"
    )
