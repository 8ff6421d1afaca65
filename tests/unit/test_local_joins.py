"""Joins handed to the sequencer of the same process (docs/adr/0011), on hand-written fakes.

The API offers a join to its own sequencer; when that sequencer owns the room's partition it
decides every offer that arrived meanwhile in one transaction, without a command record, and
answers each once its events are committed and handed to the read model. Anything it does not
decide is answered with the reason, and the API publishes the command instead: a join decided both
ways still has one ticket, because a join whose ticket the room knows decides nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from test_api import TOPICS, unit_services
from test_hand_off import OffsetProducer, rig
from test_sequencer_batch import COMMANDS, FakeConsumer, LogReplayingSequencer, commands, configure, join

from waitroom_core.room import InvalidCommand
from waitroom_events.commands import Command, JoinRequested
from waitroom_events.events import RoomEvent, TicketAdmitted, TicketIssued
from waitroom_platform.runtime import OwnLoop
from waitroom_ticketing.api import Services
from waitroom_ticketing.sequencer import (
    NotDecidedHere,
    Offer,
    OutcomeUnknown,
    Sequencer,
    _CommandLoop,
    decider_of,
)

NOW = 1_000.0


class Answers:
    """The replies of offers, by ticket id, and the order they came in."""

    def __init__(self) -> None:
        self.by_ticket: dict[str, BaseException | None] = {}
        self.order: list[str] = []

    def offer(self, ticket_id: str, *, room_id: str = "r") -> Offer:
        def reply(error: BaseException | None) -> None:
            assert ticket_id not in self.by_ticket, f"{ticket_id} answered twice"
            self.by_ticket[ticket_id] = error
            self.order.append(ticket_id)

        return Offer(JoinRequested(room_id=room_id, ticket_id=ticket_id, requested_at=NOW), (), reply)


def issued(events: Sequence[RoomEvent]) -> list[tuple[str, int]]:
    return [(e.ticket_id, e.queue_no) for e in events if isinstance(e, TicketIssued)]


async def decide_pending(sequencer: Sequencer) -> None:
    """One pass of the sequencer's offer task over what is pending."""
    task = asyncio.create_task(sequencer._decide_offered())
    try:
        for _ in range(100):
            await asyncio.sleep(0)
            if not sequencer._offers and not sequencer._lock.locked():
                break
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_offers_that_arrive_together_are_decided_in_one_transaction_in_order_without_a_command() -> None:
    sequencer, loop, producer, handed = rig()
    await loop.process(COMMANDS, commands(configure(capacity=1), join("a")))  # a room, its first commit
    committed_before = len(producer.transactions)
    answers = Answers()
    for ticket_id in ("b", "c", "d"):
        sequencer.offer(answers.offer(ticket_id))
    assert answers.by_ticket == {}, "answered only once committed"

    await decide_pending(sequencer)

    assert answers.by_ticket == {"b": None, "c": None, "d": None}
    assert producer.transactions[committed_before:] == ["committed"], "the three offers shared one transaction"
    offered = [event for offset, event in producer.placed if offset > 1]
    assert issued(offered) == [("b", 2), ("c", 3), ("d", 4)], "numbers follow the room's, in arrival order"
    assert all(w.source_offset is None for w in producer.events()[-3:]), "no command record, so no command offset"
    assert producer.offsets == [], "no command offset goes into the transaction either"
    (partition, _, upto, events), *_ = handed
    assert issued(events) == issued(offered) and upto == producer.placed[-1][0], "handed to the read model"
    assert sequencer._owned[0].next_offset == 2, "the command offset is the topic's alone"


async def test_an_offer_for_a_room_no_partition_here_holds_is_refused_at_once_and_writes_nothing() -> None:
    sequencer, _, producer, _ = rig()
    answers = Answers()

    sequencer.offer(answers.offer("a", room_id="elsewhere"))

    assert isinstance(answers.by_ticket["a"], NotDecidedHere)
    assert producer.log == [] and sequencer._offers == {}


async def test_offers_of_a_partition_revoked_before_their_turn_are_answered_not_decided_here() -> None:
    sequencer, loop, producer, _ = rig()
    await loop.process(COMMANDS, commands(configure(), join("a")))
    answers = Answers()
    sequencer.offer(answers.offer("b"))
    written = len(producer.log)

    await sequencer.revoke({COMMANDS})
    await decide_pending(sequencer)

    assert isinstance(answers.by_ticket["b"], NotDecidedHere)
    assert len(producer.log) == written


async def test_a_join_decided_here_and_then_published_as_a_command_still_has_one_ticket() -> None:
    """After an unknown outcome the API publishes the join; if the transaction had committed after
    all, the command finds the ticket known and decides nothing."""
    sequencer, loop, producer, _ = rig()
    await loop.process(COMMANDS, commands(configure(), join("a")))
    answers = Answers()
    sequencer.offer(answers.offer("b"))
    await decide_pending(sequencer)
    assert answers.by_ticket == {"b": None}
    events_before = len(producer.events())

    await loop.process(COMMANDS, commands(join("b"), first_offset=2))

    assert len(producer.events()) == events_before
    assert issued([w.message() for w in producer.events()]) == [("a", 1), ("b", 2)]  # type: ignore[misc]


async def test_a_failed_transaction_answers_outcome_unknown_and_the_partition_is_rebuilt_from_the_log() -> None:
    # without transactions: the recovery's takeover needs no broker (the fake producer serves it)
    sequencer, loop, producer, _ = rig(transactional=False)
    await loop.process(COMMANDS, commands(configure(capacity=1), join("a")))
    before = sequencer._owned[0]
    producer.fail_on_send = producer.sends + 1  # the broker goes away during the offers' append
    answers = Answers()
    sequencer.offer(answers.offer("b"))

    await decide_pending(sequencer)

    assert isinstance(answers.by_ticket["b"], OutcomeUnknown)
    after = sequencer._owned[0]
    assert after is not before, "rebuilt from the log, which does not hold b"
    assert after.rooms["r"].last_queue_no == 1
    await loop.process(COMMANDS, commands(join("b"), first_offset=2))  # the API published it instead
    assert issued([w.message() for w in producer.events()]) == [("a", 1), ("b", 2)]  # type: ignore[misc]


async def test_a_refused_offer_is_answered_with_its_error_and_the_others_in_its_transaction_commit() -> None:
    sequencer, loop, producer, _ = rig()
    await loop.process(COMMANDS, commands(configure(capacity=5), join("a")))
    answers = Answers()
    refusing = Sequencer._fold

    def fold(self: Sequencer, owned: Any, command: Command, now: float) -> list[RoomEvent]:
        if getattr(command, "ticket_id", None) == "bad":
            raise InvalidCommand("refused for the test")
        return refusing(self, owned, command, now)

    sequencer._fold = fold.__get__(sequencer)  # type: ignore[method-assign]
    for ticket_id in ("b", "bad", "c"):
        sequencer.offer(answers.offer(ticket_id))

    await decide_pending(sequencer)

    assert isinstance(answers.by_ticket["bad"], InvalidCommand)
    assert answers.by_ticket["b"] is None and answers.by_ticket["c"] is None
    assert issued([w.message() for w in producer.events()]) == [("a", 1), ("b", 2), ("c", 3)]  # type: ignore[misc]
    assert producer.dead_letters() == [], "the API publishes a refused join: the command path dead-letters it"


async def test_the_events_floor_after_a_commit_is_the_offset_after_its_last_event() -> None:
    """A snapshot taken between transactions starts its replay at the floor: with events that name
    no command offset, every event before the floor must be in the rooms and none after it."""
    sequencer, loop, producer, _ = rig()
    await loop.process(COMMANDS, commands(configure(capacity=1), join("a"), join("b")))
    answers = Answers()
    sequencer.offer(answers.offer("c"))
    await decide_pending(sequencer)

    last_event = producer.placed[-1][0]
    assert sequencer._owned[0].events_floor == last_event + 1


async def test_a_stopping_sequencer_answers_every_pending_offer() -> None:
    sequencer, loop, _, _ = rig()
    await loop.process(COMMANDS, commands(configure(), join("a")))
    answers = Answers()
    sequencer.offer(answers.offer("b"))

    sequencer._consumer = None  # the fake consumer has no stop()
    await sequencer.stop()

    assert isinstance(answers.by_ticket["b"], NotDecidedHere)
    late = Answers()
    sequencer.offer(late.offer("c"))
    assert isinstance(late.by_ticket["c"], NotDecidedHere)


class InThreadSequencer(LogReplayingSequencer):
    """A fake-backed sequencer run by ``OwnLoop`` as ticketing runs the real one: offers only."""

    def __init__(self) -> None:
        self.offset_producer = OffsetProducer()
        super().__init__(self.offset_producer, FakeConsumer(), transactional=True)
        self.handed: list[list[RoomEvent]] = []
        self._hand_off_to = lambda p, after, upto, events: self.handed.append(list(events))

    async def start(self) -> None:
        self._deciding = asyncio.get_running_loop().create_task(self._decide_offered())
        await _CommandLoop(self, self.consumer).process(COMMANDS, commands(configure(capacity=1)))  # type: ignore[arg-type]

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        self._consumer = None
        await super().stop()


async def test_the_api_hands_a_join_across_threads_and_gets_the_answer_on_its_own_loop() -> None:
    own = OwnLoop("sequencer", InThreadSequencer)
    await own.start()
    try:
        decide = decider_of(own)
        answers = [decide(JoinRequested(room_id="r", ticket_id=t, requested_at=NOW), ()) for t in ("a", "b")]
        outcomes = await asyncio.wait_for(asyncio.gather(*answers), timeout=10)  # type: ignore[arg-type]
        assert outcomes == [None, None]
        elsewhere = decide(JoinRequested(room_id="other", ticket_id="c", requested_at=NOW), ())
        assert elsewhere is not None
        assert isinstance(await asyncio.wait_for(elsewhere, timeout=10), NotDecidedHere)
        sequencer = own.inner
        assert isinstance(sequencer, InThreadSequencer)
        events = [event for batch in sequencer.handed for event in batch]
        assert issued(events) == [("a", 1), ("b", 2)]
        assert any(isinstance(e, TicketAdmitted) and e.ticket_id == "a" for e in events)
    finally:
        await own.stop()
    assert decider_of(own)(JoinRequested(room_id="r", ticket_id="d", requested_at=NOW), ()) is None, (
        "no offer once the sequencer's loop is gone: the API publishes"
    )


# ---------------------------------------------------------------- the API's side (Services.submit_join)


def services_with(decide: Any) -> Services:
    """The API's unit services (a fake log that sequences what is published) with ``decide``."""
    svc = unit_services(TOPICS, join_wait_s=0.5)
    svc.decide_locally = decide
    svc.publish_timeout_s = 0.2  # how long a join waits for its sequencer's answer
    return svc


def answering(outcome: BaseException | None | str) -> Any:
    """A decider whose answer is ``outcome`` (``"never"``: no answer; ``"absent"``: no sequencer)."""
    offered: list[Command] = []

    def decide(command: Command, headers: Sequence[tuple[str, bytes]]) -> asyncio.Future[BaseException | None] | None:
        offered.append(command)
        if outcome == "absent":
            return None
        answer: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        if outcome != "never":
            answer.set_result(outcome)  # type: ignore[arg-type]
        return answer

    decide.offered = offered  # type: ignore[attr-defined]
    return decide


async def test_a_join_the_local_sequencer_decided_is_not_published() -> None:
    decide = answering(None)
    svc = services_with(decide)
    command = JoinRequested(room_id="r", ticket_id="a", requested_at=NOW)

    await svc.submit_join(command)

    assert decide.offered == [command]
    assert svc.publisher.published == []


@pytest.mark.parametrize(
    "outcome",
    [NotDecidedHere("not owned"), OutcomeUnknown("failed"), InvalidCommand("refused"), "never", "absent"],
    ids=["not owned here", "outcome unknown", "refused", "no answer in time", "no sequencer"],
)
async def test_a_join_the_local_sequencer_did_not_decide_is_published_as_a_command(outcome: Any) -> None:
    svc = services_with(answering(outcome))
    command = JoinRequested(room_id="r", ticket_id="a", requested_at=NOW)

    await svc.submit_join(command)

    assert svc.publisher.published == [command]


async def test_without_a_local_sequencer_every_join_is_published() -> None:
    svc = services_with(None)
    command = JoinRequested(room_id="r", ticket_id="a", requested_at=NOW)
    await svc.submit_join(command)
    assert svc.publisher.published == [command]
