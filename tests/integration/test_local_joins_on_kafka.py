"""Joins handed to the sequencer of the same process (docs/adr/0011) on a real broker.

Handed-over joins are decided in the sequencer's transactions without a command record, so their
events name no command offset. A new owner, rebuilding the partition from a snapshot and the events
after it, and a new read model starting from the same snapshot, must still fold every event exactly
once: the numbers stay dense, the room's counts right, and a join that also arrived as a command
(the API's fallback after an unknown outcome) still has one ticket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from support.kafka_log import raw_records
from support.waiting import eventually

from waitroom_events.codec import decode, header
from waitroom_events.commands import JoinRequested, RoomConfigureRequested
from waitroom_events.events import RoomEvent, TicketIssued
from waitroom_events.topics import TopicRegistry
from waitroom_platform.kafka import HEADER_SOURCE_OFFSET, Publisher, make_producer
from waitroom_platform.settings import KafkaSettings
from waitroom_platform.snapshots import SnapshotStore
from waitroom_ticketing.read_model import ReadModel
from waitroom_ticketing.sequencer import Offer, Sequencer, SequencerOptions

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOM = "handed-room"
CAPACITY = 3


def options(topics: TopicRegistry) -> SequencerOptions:
    # a snapshot every 10 events: several during the joins, and events after the last one
    return SequencerOptions(
        f"{topics.commands.name}.group", transactional=True, snapshot_every_events=10, snapshot_every_s=3600
    )


async def running(sequencer: Sequencer) -> asyncio.Task[None]:
    await sequencer.start()
    run = asyncio.create_task(sequencer.run())
    await eventually(lambda: sequencer.ready() or run.done(), timeout=60)
    assert not run.done(), run
    return run


async def stopped(sequencer: Sequencer, run: asyncio.Task[None]) -> None:
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    await sequencer.stop()


def offered(sequencer: Sequencer, ticket_id: str, room_id: str = ROOM) -> asyncio.Future[BaseException | None]:
    answer: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    command = JoinRequested(room_id=room_id, ticket_id=ticket_id, requested_at=time.time())
    sequencer.offer(Offer(command, (), lambda error: answer.done() or answer.set_result(error)))
    return answer


def issued(events: Sequence[RoomEvent]) -> list[TicketIssued]:
    return [e for e in events if isinstance(e, TicketIssued)]


async def test_handed_over_joins_are_in_the_log_once_and_rebuilt_from_a_snapshot_by_a_new_owner_and_read_model(
    kafka_bootstrap: str, topics: TopicRegistry
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    handed: list[RoomEvent] = []
    first = Sequencer(kafka, topics, options(topics), committed=lambda p, after, upto, events: handed.extend(events))
    run = await running(first)
    producer = make_producer(kafka)
    await producer.start()
    publisher = Publisher(producer)
    try:
        configure = RoomConfigureRequested(room_id=ROOM, requested_at=time.time(), capacity=CAPACITY)
        await publisher.publish(topics.commands.name, configure)
        await eventually(lambda: any(ROOM in owned.rooms for owned in first._owned.values()), timeout=30)

        # 30 joins handed over in three waves, 4 through the topic between them, and one handed-over
        # join published as a command too (as the API does after an unknown outcome)
        for wave in range(3):
            answers = [offered(first, f"h{wave}-{i}") for i in range(10)]
            assert await asyncio.wait_for(asyncio.gather(*answers), timeout=30) == [None] * 10
            await publisher.publish(
                topics.commands.name, JoinRequested(room_id=ROOM, ticket_id=f"t{wave}", requested_at=time.time())
            )
        await publisher.publish(topics.commands.name, JoinRequested(room_id=ROOM, ticket_id="t3", requested_at=0.0))
        await publisher.publish(topics.commands.name, JoinRequested(room_id=ROOM, ticket_id="h0-0", requested_at=0.0))
        room = next(owned.rooms[ROOM] for owned in first._owned.values() if ROOM in owned.rooms)
        await eventually(lambda: room.last_queue_no == 34, timeout=30)
        # applied is not committed: stopping now could abort t3's transaction (its command would be
        # decided again by the next owner, but the log read below would not hold it yet)
        await eventually(lambda: "t3" in {e.ticket_id for e in issued(handed)}, timeout=30)
        handed_over = {f"h{wave}-{i}" for wave in range(3) for i in range(10)}
        assert handed_over <= {e.ticket_id for e in issued(handed)}, "each reached the read model's hand-off"
        await asyncio.wait(set(first._writing.values()), timeout=30)  # the snapshots written
    finally:
        await stopped(first, run)

    records = await raw_records(kafka_bootstrap, topics.room_events.name, committed_only=True)
    events = [(decode(r.value, r.headers), header(r.headers, HEADER_SOURCE_OFFSET)) for r in records]
    tickets = [(event, source) for event, source in events if isinstance(event, TicketIssued)]
    assert sorted(e.queue_no for e, _ in tickets) == list(range(1, 35)), "dense numbers, each once"
    assert len({e.ticket_id for e, _ in tickets}) == 34, "h0-0, also published as a command, has one ticket"
    assert all((source is None) == e.ticket_id.startswith("h") for e, source in tickets), (
        "a handed-over join's events name no command offset; a command's do"
    )

    second = Sequencer(kafka, topics, options(topics))
    run = await running(second)
    try:
        owned = next(o for o in second._owned.values() if ROOM in o.rooms)
        rebuilt = owned.rooms[ROOM]
        assert (rebuilt.last_queue_no, rebuilt.active, rebuilt.waiting) == (34, CAPACITY, 34 - CAPACITY)
        assert owned.events_replayed < len(records), "the new owner started from a snapshot"
        # the next join, handed over to the new owner, gets the next number
        assert await asyncio.wait_for(offered(second, "after"), timeout=30) is None
        assert rebuilt.last_queue_no == 35
    finally:
        await stopped(second, run)
        await producer.stop()

    model = ReadModel(kafka, topics.room_events.name, SnapshotStore(kafka, topics.snapshots.name))
    await model.start()
    tail = asyncio.create_task(model.run())
    try:
        await eventually(model.ready, timeout=30)
        seen = model.room(ROOM)
        assert seen is not None
        assert (seen.last_queue_no, seen.active, seen.waiting) == (35, CAPACITY, 35 - CAPACITY)
    finally:
        tail.cancel()
        await asyncio.gather(tail, return_exceptions=True)
        await model.stop()


async def test_a_partition_the_tail_left_to_the_hand_off_is_read_again_once_another_owner_writes_it(
    kafka_bootstrap: str, topics: TopicRegistry
) -> None:
    """While its own sequencer hands it every commit, the read model's tail does not fetch the
    partition (ADR 0011 amendment). When the hand-offs stop (the partition went to another process),
    the tail reads it again from just after what was handed over: nothing missed, nothing twice."""
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    room_id = "parked-room"
    model = ReadModel(kafka, topics.room_events.name)
    await model.start()
    tail = asyncio.create_task(model.run())
    producer = make_producer(kafka)
    await producer.start()
    publisher = Publisher(producer)
    first = Sequencer(kafka, topics, options(topics), committed=model.take_committed_threadsafe)
    run = await running(first)
    try:
        await eventually(model.ready, timeout=30)
        await publisher.publish(
            topics.commands.name, RoomConfigureRequested(room_id=room_id, requested_at=time.time(), capacity=CAPACITY)
        )
        await eventually(lambda: model.room(room_id) is not None, timeout=30)
        for i in range(6):
            assert await asyncio.wait_for(offered(first, f"a{i}", room_id), timeout=30) is None
        assert model.events_taken >= 5, "the joins after the first commit were handed over"
        consumer = model._tail._consumer
        assert consumer is not None
        assert model.describe()["partitions_parked"] == 1, "the tail leaves the partition to the hand-off"
        assert len(consumer.paused()) == 1
    finally:
        await stopped(first, run)

    second = Sequencer(kafka, topics, options(topics))  # another process: it hands nothing over
    run = await running(second)
    try:
        for i in range(4):
            assert await asyncio.wait_for(offered(second, f"b{i}", room_id), timeout=30) is None
        await eventually(lambda: model.ticket(room_id, "b3") is not None, timeout=10)
        assert model.describe()["partitions_parked"] == 0
        room = model.room(room_id)
        assert room is not None
        assert [t.ticket_id for t in room.tickets.tickets()] == [f"a{i}" for i in range(6)] + [
            f"b{i}" for i in range(4)
        ]
        assert room.last_queue_no == 10, "each join folded once"
    finally:
        await stopped(second, run)
        await producer.stop()
        tail.cancel()
        await asyncio.gather(tail, return_exceptions=True)
        await model.stop()
