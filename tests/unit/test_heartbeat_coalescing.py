"""The API's heartbeat coalescing (services/ticketing/heartbeats.py), with a fake log."""

from __future__ import annotations

import asyncio

import pytest

from waitroom_events.heartbeats import Heartbeat, HeartbeatBatch
from waitroom_ticketing.heartbeats import MAX_BATCH_TICKETS, HeartbeatCoalescer

pytestmark = pytest.mark.asyncio

WINDOW_S = 0.02


class FakeLog:
    def __init__(self) -> None:
        self.written: list[HeartbeatBatch | Heartbeat] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def send(self, message: HeartbeatBatch | Heartbeat) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.written.append(message)


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def coalescer(log: FakeLog, window_s: float = WINDOW_S, clock: Clock | None = None) -> HeartbeatCoalescer:
    return HeartbeatCoalescer(log.send, window_s=window_s, publish_timeout_s=1.0, clock=clock or Clock())


async def test_heartbeats_of_a_room_within_one_window_become_one_batch_stamped_when_written() -> None:
    log, clock = FakeLog(), Clock(100.0)
    beats = coalescer(log, clock=clock)

    done = [beats.add("gig", "t1"), beats.add("gig", "t2"), beats.add("gig", "t1")]
    other = beats.add("fair", "t9")
    clock.now = 100.02  # the window's end: the stamp is the write's, never before a heartbeat in it
    await asyncio.gather(*done, other)

    batch = next(m for m in log.written if m.room_id == "gig")
    assert batch == HeartbeatBatch(room_id="gig", ticket_ids=["t1", "t2"], at=100.02)
    # one heartbeat in its window: the plain v1 record
    assert next(m for m in log.written if m.room_id == "fair") == Heartbeat(room_id="fair", ticket_id="t9", at=100.02)
    assert len(log.written) == 2
    assert beats.acknowledged == {"t1": 100.02, "t2": 100.02, "t9": 100.02}


async def test_a_full_batch_is_written_before_its_window_ends() -> None:
    log = FakeLog()
    beats = coalescer(log, window_s=0.1)

    futures = [beats.add("gig", f"t{i}") for i in range(MAX_BATCH_TICKETS)]
    await asyncio.wait_for(asyncio.gather(*futures), 0.05)  # well inside the 100 ms window

    assert [len(m.ticket_ids) for m in log.written if isinstance(m, HeartbeatBatch)] == [MAX_BATCH_TICKETS]


async def test_a_window_of_zero_writes_each_heartbeat_at_once() -> None:
    log = FakeLog()
    beats = coalescer(log, window_s=0.0, clock=Clock(5.0))

    await beats.add("gig", "t1")

    assert log.written == [Heartbeat(room_id="gig", ticket_id="t1", at=5.0)]


async def test_a_failed_write_fails_every_waiter_and_moves_no_acknowledged_stamp() -> None:
    log, clock = FakeLog(), Clock(10.0)
    beats = coalescer(log, clock=clock)
    await beats.add("gig", "t1")
    log.fail = RuntimeError("broker down")
    clock.now = 15.0

    first, second = beats.add("gig", "t1"), beats.add("gig", "t2")
    results = await asyncio.gather(first, second, return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in results)
    assert beats.acknowledged == {"t1": 10.0}


async def test_a_heartbeat_answers_at_once_only_if_losing_it_leaves_the_next_one_time_to_land() -> None:
    beats = HeartbeatCoalescer(FakeLog().send, window_s=0.1, publish_timeout_s=1.0)
    timing = {"interval_s": 5.0, "timeout_s": 20.0}

    # never acknowledged: wait for the log
    assert not beats.may_answer_at_once("t1", 100.0, **timing)
    beats.acknowledged["t1"] = 100.0
    # the next heartbeat (5 s later, 0.1 s window, 1 s publish) lands before 100 + 20
    assert beats.may_answer_at_once("t1", 105.0, **timing)
    assert beats.may_answer_at_once("t1", 113.8, **timing)
    # losing this one could expire the visitor: 113.9 + 5 + 0.1 + 1 = 120
    assert not beats.may_answer_at_once("t1", 113.9, **timing)
    # a room whose timeout barely exceeds the interval always waits
    assert not beats.may_answer_at_once("t1", 100.0, interval_s=5.0, timeout_s=6.0)


async def test_draining_writes_what_is_collected_before_the_window_ends() -> None:
    log = FakeLog()
    beats = coalescer(log, window_s=0.1, clock=Clock(1.0))
    beats.add("gig", "t1")

    await asyncio.wait_for(beats.drain(), 0.05)

    assert log.written == [Heartbeat(room_id="gig", ticket_id="t1", at=1.0)]


async def test_the_window_is_at_most_100_ms() -> None:
    with pytest.raises(ValueError):
        HeartbeatCoalescer(FakeLog().send, window_s=0.2, publish_timeout_s=1.0)


async def test_a_heartbeat_sooner_than_half_the_interval_after_the_last_is_answered_from_memory() -> None:
    log, clock = FakeLog(), Clock(100.0)
    beats = coalescer(log, clock=clock)
    await beats.add("gig", "t1")

    assert beats.heard_recently("t1", 102.4, interval_s=5.0)
    assert not beats.heard_recently("t1", 102.6, interval_s=5.0)
    assert not beats.heard_recently("t2", 100.1, interval_s=5.0)  # never acknowledged
