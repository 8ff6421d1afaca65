"""The all-in-one hand-off (ADR 0009): the sequencer hands what it committed to the read model of
its own process, which then answers a join without waiting to fetch the events back from Kafka.

Every event must still be applied once and in log order: a hand-off is taken only when the read
model holds everything before it, and the tail skips what was taken when it reads it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from aiokafka.structs import ConsumerRecord
from test_sequencer_batch import (
    COMMANDS,
    TOPICS,
    FakeBatch,
    FakeConsumer,
    FakeProducer,
    LogReplayingSequencer,
    commands,
    configure,
    join,
)

from waitroom_events.codec import decode
from waitroom_events.events import RoomConfigured, RoomEvent, TicketIssued
from waitroom_platform.settings import KafkaSettings
from waitroom_ticketing.read_model import ReadModel
from waitroom_ticketing.sequencer import _CommandLoop

NOW = 1_000.0


@dataclass
class OffsetProducer(FakeProducer):
    """A fake producer whose record batches are delivered at offsets of the room-events log, with a
    control record (the commit marker) after each committed transaction, as Kafka writes them."""

    next_offset: int = 0
    #: (offset, event) of every room-event written, in log order
    placed: list[tuple[int, RoomEvent]] = field(default_factory=list)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        await super().send_batch(batch, topic, partition=partition)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        base = self.next_offset
        if topic == TOPICS.room_events.name:
            for value, _, headers in batch.records:
                message = decode(value, headers)
                assert isinstance(message, RoomEvent)
                self.placed.append((self.next_offset, message))
                self.next_offset += 1
        future.set_result(SimpleNamespace(offset=base))
        return future

    def transaction(self) -> Any:
        inner = super().transaction()
        producer = self

        class _Marked:
            async def __aenter__(self) -> None:
                await inner.__aenter__()

            async def __aexit__(self, *exc: Any) -> bool | None:
                result = await inner.__aexit__(*exc)
                producer.next_offset += 1  # the transaction's marker takes an offset
                return result

        return _Marked()


def rig(
    *, transactional: bool = True
) -> tuple[LogReplayingSequencer, _CommandLoop, OffsetProducer, list[tuple[int, int, int, list[RoomEvent]]]]:
    handed: list[tuple[int, int, int, list[RoomEvent]]] = []
    producer = OffsetProducer()
    sequencer = LogReplayingSequencer(producer, FakeConsumer(), transactional=transactional)
    sequencer._hand_off_to = lambda p, after, upto, events: handed.append((p, after, upto, list(events)))
    return sequencer, _CommandLoop(sequencer, sequencer.consumer), producer, handed  # type: ignore[arg-type]


async def test_each_commit_after_the_first_is_handed_off_with_the_offsets_it_follows_and_ends_at() -> None:
    sequencer, loop, producer, handed = rig()
    await loop.process(COMMANDS, commands(configure(), join("a")))
    assert handed == [], "the first commit of an owner follows nothing it knows: not handed off"
    first_last = producer.placed[-1][0]

    await loop.process(COMMANDS, commands(join("b"), join("c"), first_offset=2))
    (partition, after, upto, events), *more = handed
    assert not more and partition == 0
    assert after == first_last, "a hand-off names the last offset of the commit before it"
    second = [(offset, event) for offset, event in producer.placed if offset > first_last]
    assert upto == second[-1][0]
    assert events == [event for _, event in second], "the events handed off are the ones in the log, in order"
    assert [e.ticket_id for e in events if isinstance(e, TicketIssued)] == ["b", "c"]


async def test_a_batch_that_failed_is_not_handed_off_nor_is_the_first_commit_after_the_recovery() -> None:
    # without transactions: the recovery's takeover then needs no broker (the fake producer serves)
    sequencer, loop, producer, handed = rig(transactional=False)
    await loop.process(COMMANDS, commands(configure(), join("a")))
    before = sequencer._owned[0]
    producer.fail_on_send = producer.sends + 1  # the broker goes away during the next batch
    await loop.process(COMMANDS, commands(join("b"), first_offset=2))
    assert sequencer._owned[0] is not before, "the partition was rebuilt from the log"
    assert handed == []
    await loop.process(COMMANDS, commands(join("c"), first_offset=3))
    assert handed == [], "after a recovery the owner knows no previous commit"
    await loop.process(COMMANDS, commands(join("d"), first_offset=4))
    assert [[e.ticket_id for e in events if isinstance(e, TicketIssued)] for *_, events in handed] == [["d"]]


def record(partition: int, offset: int) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(TOPICS.room_events.name, partition, offset, 0, 0, b"r", b"", None, 1, 1, [])


def started_model() -> ReadModel:
    model = ReadModel(KafkaSettings(), TOPICS.room_events.name)
    model._tail.caught_up.set()
    return model


CONFIGURED = RoomConfigured(
    room_id="r", at=NOW, capacity=1, heartbeat_timeout_s=20.0, heartbeat_interval_s=5.0, target_url=None, paused=False
)


def issued(ticket_id: str, queue_no: int) -> TicketIssued:
    return TicketIssued(room_id="r", ticket_id=ticket_id, queue_no=queue_no, at=NOW)


async def test_a_join_is_answered_from_the_hand_off_and_the_tail_does_not_apply_it_again() -> None:
    model = started_model()
    model._apply_decoded([(record(0, 0), CONFIGURED), (record(0, 1), issued("a", 1))])
    waiting = asyncio.create_task(model.wait_for_ticket("r", "b", 5))
    await asyncio.sleep(0)

    model.take_committed(0, after=1, upto=3, events=[issued("b", 2)])  # offset 2: the marker of 0..1
    ticket = await asyncio.wait_for(waiting, 1)
    assert ticket is not None and ticket.queue_no == 2
    assert model.events_taken == 1

    # the tail reads the same events later, then what follows them
    model._apply_decoded([(record(0, 3), issued("b", 2)), (record(0, 5), issued("c", 3))])
    room = model.room("r")
    assert room is not None and [t.ticket_id for t in room.tickets.tickets()] == ["a", "b", "c"]
    assert model.events_applied == 4, "every event applied exactly once"


async def test_a_hand_off_that_does_not_follow_what_the_model_holds_is_left_to_the_tail() -> None:
    model = started_model()
    model._apply_decoded([(record(0, 0), CONFIGURED)])
    # the tail has not read the commit at offset 1..2 yet: taking 3.. now would skip it
    model.take_committed(0, after=2, upto=4, events=[issued("b", 2)])
    assert model.events_taken == 0 and model.ticket("r", "b") is None
    model._apply_decoded([(record(0, 1), issued("a", 1)), (record(0, 4), issued("b", 2))])
    room = model.room("r")
    assert room is not None and [t.ticket_id for t in room.tickets.tickets()] == ["a", "b"]
    # another partition's offsets are its own
    model.take_committed(1, after=4, upto=6, events=[issued("z", 1)])
    assert model.events_taken == 0


async def test_the_read_model_takes_nothing_before_it_has_caught_up_with_the_log() -> None:
    model = ReadModel(KafkaSettings(), TOPICS.room_events.name)
    model._apply_decoded([(record(0, 0), CONFIGURED)])
    model.take_committed(0, after=0, upto=2, events=[issued("a", 1)])
    assert model.events_taken == 0 and model.ticket("r", "a") is None
