"""The reaper's parts on fakes, moved through time: who is expired, when, and what is written.

Each test states a history on the in-memory log (rooms configured, tickets issued, heartbeats),
moves the fake clock on in 10 ms rounds of every loop (feed, due checks, looks; see
``ReaperRig``) and checks what the reaper sent. No broker, no sleeps.
"""

from __future__ import annotations

import pytest
from test_reaper_fakes import DELAY, GRACE, P, ReaperRig, check_dues, expiry_times

from waitroom_events.codec import encode
from waitroom_events.events import TicketIssued
from waitroom_events.heartbeats import Heartbeat
from waitroom_events.reaper import ExpiryCheck

#: a look that finds the heartbeats not read up to the deadline plus grace yet retries this soon;
#: the fake feed reads to the end each round, stamped FETCH_SLACK_S earlier than the round
LANDS_WITHIN_S = 0.06


async def started_rig() -> ReaperRig:
    rig = ReaperRig()
    await rig.take_over()
    return rig


async def test_a_silent_ticket_is_expired_once_at_its_deadline_plus_grace_and_a_heartbeating_one_never() -> None:
    rig = await started_rig()
    rig.configure("gig", timeout_s=3.0)
    rig.issue("gig", "quiet", 1)
    rig.issue("gig", "beating", 2)
    rig.keep_beating("gig", "beating", interval_s=1.0)
    issued = rig.clock.now
    rig.sequencer_applies = True

    await rig.run_for(30.0)

    (expired_at,) = expiry_times(rig, "quiet")
    assert issued + 3.0 + GRACE <= expired_at <= issued + 3.0 + GRACE + LANDS_WITHIN_S
    assert rig.publisher.expiries("beating") == []
    assert rig.state.ticket("gig", "beating")[1] is not None
    assert rig.state.ticket("gig", "quiet") == (None, None)


async def test_an_expiry_the_sequencer_did_not_apply_is_asked_for_again_by_the_check_after_the_resend_delay() -> None:
    rig = await started_rig()
    rig.configure("gig", timeout_s=3.0)
    rig.issue("gig", "quiet")

    await rig.run_for(25.0)

    # the look at deadline + grace asks; the check due at 1010 finds it asked ~7 s ago; the one at 1020 asks again
    first, again = expiry_times(rig, "quiet")
    assert first == pytest.approx(1003.0 + GRACE, abs=LANDS_WITHIN_S)
    assert again == pytest.approx(1020.0, abs=0.02)
    assert again - first >= rig.options.resend_expire_after_s


async def test_a_room_is_checked_every_delay_while_it_has_live_tickets_with_checks_stamped_at_the_tick() -> None:
    rig = await started_rig()
    rig.configure("gig", timeout_s=20.0)
    rig.clock.advance(0.4)
    rig.issue("gig", "a")
    rig.keep_beating("gig", "a", interval_s=5.0)

    await rig.run_for(45.0)

    checks = rig.publisher.checks()
    assert all(c.partition == P and c.timestamp_ms is not None and c.timestamp_ms % 1000 == 0 for c in checks)
    assert check_dues(checks) == [1010.0, 1020.0, 1030.0, 1040.0, 1050.0]
    assert rig.metrics.check_records_written == len(checks)
    assert rig.publisher.expiries() == []


async def test_a_heartbeating_ticket_under_the_default_timeout_never_gets_a_look() -> None:
    rig = await started_rig()
    rig.configure("gig", timeout_s=20.0)
    rig.issue("gig", "a")
    rig.keep_beating("gig", "a", interval_s=5.0)

    await rig.run_for(60.0)

    assert rig.metrics.looks == 0
    assert len(rig.looks) == 0
    assert rig.metrics.ticket_checks == 6


async def test_a_look_is_armed_at_the_deadline_when_it_comes_before_the_next_check() -> None:
    rig = await started_rig()
    rig.configure("gig", timeout_s=20.0)
    rig.issue("gig", "quiet")  # at 1000.0: deadline 1020.0, looked at from deadline + grace
    rig.sequencer_applies = True

    await rig.run_until(lambda: rig.metrics.ticket_checks == 2, limit_s=25.0)  # the checks due at 1010 and 1020

    assert rig.clock.now == pytest.approx(1020.0)
    assert rig.looks.next_at == pytest.approx(1020.0 + GRACE)
    assert rig.state.rooms["gig"].scheduled_until == 1030.0
    await rig.run_for(10.0)
    (expired_at,) = expiry_times(rig, "quiet")
    assert expired_at == pytest.approx(1020.0 + GRACE, abs=LANDS_WITHIN_S)  # not at the next check, 1030


async def test_a_check_older_than_the_rooms_latest_is_dropped_as_a_duplicate() -> None:
    rig = await started_rig()
    rig.configure("gig", timeout_s=20.0)
    rig.issue("gig", "a")
    rig.keep_beating("gig", "a", interval_s=5.0)
    await rig.run_for(12.0)  # the check due at 1010 wrote the next one, due at 1020
    assert rig.state.rooms["gig"].scheduled_until == 1020.0
    written, judged = len(rig.publisher.checks()), rig.metrics.ticket_checks

    # the check due at 1010 again, as a crash before its commit re-delivers it (behind the one due at 1020)
    rig.log.append(rig.topics.reaper_delay.name, ExpiryCheck(room_id="gig", scheduled_at=1000.0), timestamp_ms=1000_000)
    await rig.run_for(9.0)

    assert rig.metrics.check_records_handled == 3
    assert len(rig.publisher.checks()) == written + 1  # the one due at 1020 wrote the next; the duplicate nothing
    assert rig.metrics.ticket_checks == judged + 1
    assert rig.state.rooms["gig"].scheduled_until == 1030.0


async def test_the_check_of_an_emptied_room_ends_its_chain_and_the_next_ticket_starts_a_new_one() -> None:
    rig = await started_rig()
    rig.configure("gig", timeout_s=20.0)
    rig.issue("gig", "a")
    await rig.run_for(1.0)
    rig.leave("gig", "a")

    await rig.run_for(30.0)

    assert check_dues(rig.publisher.checks()) == [1010.0]
    assert rig.state.rooms["gig"].scheduled_until == 0.0
    assert rig.publisher.expiries() == []
    rig.issue("gig", "b")
    await rig.run_for(0.02)
    assert check_dues(rig.publisher.checks()) == [1010.0, 1041.0]


async def test_silence_is_not_assumed_while_the_heartbeats_written_up_to_the_deadline_are_unread() -> None:
    rig = await started_rig()
    rig.configure("gig", timeout_s=3.0)
    rig.issue("gig", "a")
    rig.keep_beating("gig", "a", interval_s=1.0)
    await rig.run_for(2.0)

    rig.consumer.lagging = True  # the heartbeats keep coming; the feed reads none of them
    await rig.run_for(6.0)
    assert rig.publisher.expiries() == []
    assert rig.metrics.looks > 1  # it kept looking, and kept finding the heartbeats unread
    rig.consumer.lagging = False
    await rig.run_for(6.0)

    assert rig.publisher.expiries() == []
    assert rig.state.ticket("gig", "a")[1] is not None


async def test_a_shorter_timeout_re_arms_the_looks_of_the_rooms_tickets() -> None:
    rig = await started_rig()
    rig.configure("gig", timeout_s=20.0)
    rig.issue("gig", "quiet")
    issued = rig.clock.now
    await rig.run_for(1.0)
    assert rig.looks.next_at is None

    rig.configure("gig", timeout_s=3.0)
    await rig.run_for(0.02)
    assert rig.looks.next_at == pytest.approx(issued + 3.0 + GRACE)
    await rig.run_for(3.0)
    (expired_at,) = expiry_times(rig, "quiet")
    assert expired_at == pytest.approx(issued + 3.0 + GRACE, abs=LANDS_WITHIN_S)


async def test_an_undecodable_check_is_dead_lettered_and_the_others_of_its_round_are_handled() -> None:
    rig = await started_rig()
    rig.configure("gig", timeout_s=20.0)
    rig.issue("gig", "a")
    await rig.run_for(1.0)
    garbage = rig.log.append_raw(  # stamped as the room's check: due in the same round
        rig.topics.reaper_delay.name,
        b"{not json",
        encode(ExpiryCheck(room_id="x", scheduled_at=0)).headers,
        timestamp_ms=1000_000,
    )

    await rig.run_for(10.0)

    assert [record for record, _ in rig.publisher.dead_letters] == [garbage]
    assert rig.metrics.dead_lettered == 1
    assert rig.metrics.check_records_handled == 1
    assert check_dues(rig.publisher.checks()) == [1010.0, 1020.0]


async def test_a_poison_heartbeat_is_dead_lettered_and_an_undecodable_room_event_only_skipped() -> None:
    rig = await started_rig()
    beat_headers = encode(Heartbeat(room_id="x", ticket_id="t", at=0.0)).headers
    poison = rig.log.append_raw(
        rig.topics.heartbeats.name, b'{"room_id": "x", "ticket_id": 7, "at": "noon"}', beat_headers
    )
    issue_headers = encode(TicketIssued(room_id="x", ticket_id="t", queue_no=1, at=0.0)).headers
    rig.log.append_raw(rig.topics.room_events.name, b"{not json", issue_headers)
    rig.configure("gig", timeout_s=3.0)
    rig.issue("gig", "quiet")
    rig.sequencer_applies = True

    await rig.run_for(4.0)

    assert [record for record, _ in rig.publisher.dead_letters] == [poison]
    assert rig.metrics.heartbeats == 1
    assert rig.metrics.room_events == 4  # the undecodable one, configured, issued, expired
    assert len(expiry_times(rig, "quiet")) == 1  # the feed went on


async def test_the_feed_commits_its_heartbeats_position_as_the_dead_letter_bookmark() -> None:
    rig = ReaperRig(bookmark_every_s=0.0)
    await rig.take_over()
    rig.configure("gig", timeout_s=20.0)
    rig.issue("gig", "a")
    for _ in range(3):
        rig.heartbeat("gig", "a")

    await rig.run_for(0.01)

    (bookmark,) = rig.consumer.commits.values()
    assert bookmark == 3


def test_the_delay_of_the_check_topic_is_the_registrys() -> None:
    rig = ReaperRig()
    assert rig.schedule.delay_s == DELAY
    assert rig.schedule.next_check(1234.56) == (1_234_000, 1244.0)
