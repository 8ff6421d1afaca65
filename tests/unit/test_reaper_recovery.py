"""Recovery from an in-memory log: what a new owner of a partition knows before it judges anyone.

A reaper runs on fakes for a while, "crashes" (its memory is dropped, its last commits stay), and
a second one takes the partition over from the same log, as after ``kill -9`` and a rebalance.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from test_reaper_fakes import GRACE, FakeClock, InMemoryLog, P, ReaperRig, check_dues, expiry_times

from waitroom_core.room import RoomState, evolve
from waitroom_core.snapshot import Manifest
from waitroom_events.codec import encode
from waitroom_events.events import RoomEvent
from waitroom_events.heartbeats import Heartbeat
from waitroom_events.reaper import ExpiryCheck
from waitroom_platform.snapshots import Found, Loaded
from waitroom_reaper.state import FETCH_SLACK_S


def successor(old: ReaperRig) -> ReaperRig:
    """A new reaper over the same log, starting from what the old one had committed."""
    beats_tp = TopicPartition(old.topics.heartbeats.name, P)
    return ReaperRig(
        old.log, checks_committed=old.checks_position, heartbeats_bookmark=old.consumer.commits.get(beats_tp)
    )


def clocks(rig: ReaperRig, room_id: str) -> dict[str, tuple[float, float | None]]:
    return {t: (e.issued_at, e.last_heartbeat_at) for t, e in rig.state.rooms[room_id].tickets.items()}


async def test_a_new_owner_rebuilds_live_tickets_timeouts_last_heartbeats_and_the_pending_check() -> None:
    old = ReaperRig()
    await old.take_over()
    old.configure("gig", timeout_s=20.0)
    for n, ticket in enumerate(("beating", "quiet", "leaving"), start=1):
        old.issue("gig", ticket, n)
    old.keep_beating("gig", "beating", interval_s=5.0)
    await old.run_for(12.0)  # the check due at 1010 wrote the next one, due at 1020
    old.leave("gig", "leaving")
    await old.run_for(1.0)

    new = successor(old)
    await new.take_over()

    room = new.state.rooms["gig"]
    assert room.timeout_s == 20.0
    assert clocks(new, "gig") == clocks(old, "gig")
    assert set(room.tickets) == {"beating", "quiet"}
    assert room.scheduled_until == old.state.rooms["gig"].scheduled_until == 1020.0
    assert new.publisher.sent == []  # the pending check covers the room: no second chain
    assert all(entry.look_at is not None for entry in room.tickets.values())  # every live ticket is looked at
    assert new.state.heard_until == pytest.approx(new.clock.now - FETCH_SLACK_S)
    assert new.metrics.recoveries == 1


async def test_the_new_owner_expires_the_silent_ticket_at_its_deadline_and_not_the_one_that_kept_heartbeating() -> None:
    old = ReaperRig()
    await old.take_over()
    old.configure("gig", timeout_s=4.0)
    old.issue("gig", "beating", 1)
    old.issue("gig", "quiet", 2)
    old.keep_beating("gig", "beating", interval_s=1.0)
    old.keep_beating("gig", "quiet", interval_s=1.0)
    await old.run_for(2.0)
    old.stop_beating("quiet")
    last_heard = old.state.rooms["gig"].tickets["quiet"].last_heartbeat_at
    assert last_heard is not None

    # killed; heartbeats go on while no reaper reads them; a new one takes over 2 s later
    new = successor(old)
    for _ in range(2):
        new.clock.advance(1.0)
        new.heartbeat("gig", "beating")
    new.keep_beating("gig", "beating", interval_s=1.0)
    await new.take_over()
    new.sequencer_applies = True
    await new.run_for(20.0)

    (expired_at,) = expiry_times(new, "quiet")
    assert last_heard + 4.0 + GRACE <= expired_at <= last_heard + 4.0 + GRACE + 0.06
    assert new.publisher.expiries("beating") == []


async def test_recovery_reads_heartbeats_only_from_now_minus_the_longest_timeout_and_the_margin() -> None:
    rig = ReaperRig()
    rig.configure("gig", timeout_s=20.0)
    rig.issue("gig", "a")
    rig.clock.advance(1.0)
    rig.heartbeat("gig", "a")  # at 1001: too old to keep anyone alive at 1055
    rig.clock.advance(9.0)
    rig.heartbeat("gig", "a")  # at 1010
    rig.clock.advance(45.0)  # 1055: reads from 1055 - 20 - 30 = 1005

    await rig.take_over()

    assert rig.metrics.heartbeats == 1
    assert rig.state.rooms["gig"].tickets["a"].last_heartbeat_at == 1010.0


async def test_a_room_with_live_tickets_and_no_pending_check_gets_one_and_a_room_with_one_gets_none() -> None:
    rig = ReaperRig()
    rig.configure("pending", timeout_s=20.0)
    rig.configure("orphan", timeout_s=20.0)
    rig.issue("pending", "a")
    rig.issue("orphan", "b")
    rig.log.append(rig.topics.reaper_delay.name, ExpiryCheck(room_id="pending", scheduled_at=rig.clock.now))
    rig.clock.advance(3.0)

    await rig.take_over()

    assert [c.message.room_id for c in rig.publisher.checks()] == ["orphan"]
    assert rig.state.rooms["pending"].scheduled_until == 1010.0
    assert rig.state.rooms["orphan"].scheduled_until == check_dues(rig.publisher.checks())[0] == 1013.0


async def test_recovery_dead_letters_poison_heartbeats_only_past_the_feeds_bookmark() -> None:
    log = InMemoryLog(FakeClock())
    headers = encode(Heartbeat(room_id="gig", ticket_id="a", at=0.0)).headers
    poison = b'{"room_id": "gig", "ticket_id": 7, "at": "noon"}'
    log.append_raw("unit.heartbeats", poison, headers)  # offset 0: parked by the last owner already
    log.append("unit.heartbeats", Heartbeat(room_id="gig", ticket_id="a", at=1000.0))
    fresh = log.append_raw("unit.heartbeats", poison, headers)  # offset 2: nobody parked it yet
    rig = ReaperRig(log, heartbeats_bookmark=2)

    await rig.take_over()

    assert [record for record, _ in rig.publisher.dead_letters] == [fresh]
    assert rig.metrics.dead_lettered == 1


async def test_a_check_re_delivered_after_a_crash_behind_the_rooms_newer_one_is_dropped() -> None:
    old = ReaperRig()
    await old.take_over()
    old.configure("gig", timeout_s=20.0)
    old.issue("gig", "a")
    old.keep_beating("gig", "a", interval_s=5.0)
    await old.run_for(11.0)
    old.checks_position = 0  # killed after the check due at 1010 wrote the next one, before its commit

    new = successor(old)
    new.beating = dict(old.beating)
    await new.take_over()
    assert new.state.rooms["gig"].scheduled_until == 1020.0
    await new.run_for(10.0)  # past 1020: the re-delivered check (due 1010), then the one due at 1020

    assert new.metrics.check_records_handled == 2
    assert new.metrics.ticket_checks == 1  # the duplicate judged nobody
    assert check_dues(new.publisher.checks()) == [1030.0]  # and wrote nothing: one chain per room


async def test_the_feed_goes_on_where_recovery_stopped_and_a_released_partition_is_forgotten() -> None:
    rig = ReaperRig()
    rig.configure("gig", timeout_s=20.0)
    rig.issue("gig", "a")
    rig.heartbeat("gig", "a")
    await rig.take_over()
    rig.clock.advance(1.0)
    rig.heartbeat("gig", "a")

    await rig.fetch_feed()

    assert rig.metrics.heartbeats == 2  # one by recovery, one by the feed: none twice
    assert rig.metrics.room_events == 2
    assert rig.state.rooms["gig"].tickets["a"].last_heartbeat_at == 1001.0

    rig.recovery.release(P)
    assert rig.owned == {}
    assert rig.looks.due(rig.clock.now + 60.0) == []
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(rig.feed.before_fetch(), 0.05)  # nothing left to read: it waits for ownership
    assert rig.consumer.assignment() == set()


class FakeSnapshots:
    """The sequencer's snapshots as the reaper's recovery sees them: one partition's newest."""

    def __init__(self, found: Found) -> None:
        self.found = found
        self.loads: list[int] = []

    async def load(self, partition: int) -> Found:
        self.loads.append(partition)
        return self.found


def snapshot_of(rig: ReaperRig) -> Found:
    """The rooms folded from the log so far, covering it up to its end (as a sequencer's snapshot)."""
    rooms: dict[str, RoomState] = {}
    for message in rig.log.messages(rig.topics.room_events.name):
        assert isinstance(message, RoomEvent)
        evolve(rooms.setdefault(message.room_id, RoomState(message.room_id)), message)
    end = rig.log.end(TopicPartition(rig.topics.room_events.name, P))
    manifest = Manifest(P, 0, 0, end, 0.0, 0, 0, 0, 0, len(rooms))
    return Found(Loaded(manifest, rooms, 0, 0.0), 1, [])


async def test_a_new_owner_starting_from_a_snapshot_knows_what_one_replaying_the_whole_log_knows() -> None:
    old = ReaperRig()
    await old.take_over()
    old.configure("gig", timeout_s=20.0)
    for n, ticket in enumerate(("a", "b", "c"), start=1):
        old.issue("gig", ticket, n)
    old.leave("gig", "b")
    snapshot = snapshot_of(old)
    await old.run_for(3.0)
    old.issue("gig", "d", 4)
    old.leave("gig", "a")
    old.configure("gig", timeout_s=30.0)

    from_snapshot = ReaperRig(old.log, snapshots=FakeSnapshots(snapshot))
    from_log = ReaperRig(old.log)
    await from_snapshot.take_over()
    await from_log.take_over()

    assert from_snapshot.metrics.room_events == 3, "only the events after the snapshot are read"
    assert clocks(from_snapshot, "gig") == clocks(from_log, "gig") == {"c": (1000.0, None), "d": (1003.0, None)}
    assert from_snapshot.state.rooms["gig"].timeout_s == from_log.state.rooms["gig"].timeout_s == 30.0


async def test_without_a_valid_snapshot_the_reaper_replays_the_whole_log() -> None:
    old = ReaperRig()
    old.configure("gig", timeout_s=20.0)
    old.issue("gig", "a", 1)
    successor_ = ReaperRig(old.log, snapshots=FakeSnapshots(Found(None, 0, ["slot 0: fails its checksum"])))
    await successor_.take_over()

    assert successor_.metrics.room_events == 2
    assert list(successor_.state.rooms["gig"].tickets) == ["a"]
