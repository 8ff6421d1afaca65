"""The expiry rule: silence, the final-approach look, the durable check and its tick."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from waitroom_core.expiry import (
    TicketClock,
    TicketDecision,
    check_timestamp,
    decide_check,
    decide_look,
    first_look,
    heartbeat_replay_start,
    is_silent,
    is_superseded,
)

T = 20.0
GRACE = 0.1
DELAY = 10.0


def check(ticket: TicketClock, now: float, heard_until: float | None = None, next_due: float | None = None):
    return decide_check(
        ticket,
        timeout_s=T,
        now=now,
        next_check_due=now + DELAY if next_due is None else next_due,
        heard_until=now if heard_until is None else heard_until,
        grace_s=GRACE,
        resend_after_s=DELAY,
    )


def look(ticket: TicketClock, now: float, next_due: float, heard_until: float | None = None):
    return decide_look(
        ticket,
        timeout_s=T,
        now=now,
        next_check_due=next_due,
        heard_until=now if heard_until is None else heard_until,
        grace_s=GRACE,
        retry_s=0.02,
    )


def test_a_ticket_heard_from_less_than_the_timeout_ago_is_not_silent() -> None:
    assert not is_silent(last_seen=100.0, timeout_s=T, now=119.9, heard_until=200.0, grace_s=GRACE)


def test_a_ticket_quiet_for_the_timeout_is_silent_once_the_heartbeats_up_to_the_deadline_and_grace_are_read() -> None:
    assert not is_silent(last_seen=100.0, timeout_s=T, now=120.2, heard_until=120.05, grace_s=GRACE)
    assert is_silent(last_seen=100.0, timeout_s=T, now=120.2, heard_until=120.1, grace_s=GRACE)


def test_a_due_check_expires_a_silent_ticket() -> None:
    assert check(TicketClock(last_seen=100.0), now=125.0) == TicketDecision(expire=True)


def test_a_due_check_does_not_ask_again_for_an_expiry_it_asked_for_recently_but_does_after_the_resend_delay() -> None:
    assert check(TicketClock(last_seen=100.0, expire_sent_at=121.0), now=125.0) == TicketDecision()
    assert check(TicketClock(last_seen=100.0, expire_sent_at=121.0), now=131.5) == TicketDecision(expire=True)


def test_a_due_check_leaves_a_fresh_ticket_to_the_next_check_when_its_deadline_comes_after_it() -> None:
    # Heartbeat every 5 s, timeout 20 s: the deadline is always beyond the next check.
    assert check(TicketClock(last_seen=100.0), now=103.0) == TicketDecision()


def test_a_due_check_arms_a_look_at_the_deadline_when_the_deadline_comes_before_the_next_check() -> None:
    decision = check(TicketClock(last_seen=100.0), now=112.0)

    assert decision == TicketDecision(look_at=120.0 + GRACE)


def test_a_look_expires_a_silent_ticket_once_and_only_once() -> None:
    assert look(TicketClock(last_seen=100.0), now=120.1, next_due=125.0) == TicketDecision(expire=True)
    assert look(TicketClock(last_seen=100.0, expire_sent_at=120.1), now=120.2, next_due=125.0) == TicketDecision()


def test_a_look_at_a_ticket_that_heartbeated_meanwhile_moves_to_its_new_deadline_if_that_is_before_the_next_check() -> (
    None
):
    assert look(TicketClock(last_seen=103.0), now=120.1, next_due=125.0) == TicketDecision(look_at=123.0 + GRACE)
    assert look(TicketClock(last_seen=110.0), now=120.1, next_due=125.0) == TicketDecision()


def test_a_look_retries_shortly_while_the_heartbeats_up_to_the_deadline_are_not_all_read() -> None:
    decision = look(TicketClock(last_seen=100.0), now=120.2, next_due=125.0, heard_until=120.0)

    assert decision == TicketDecision(look_at=120.2 + 0.02)


def test_a_check_older_than_the_rooms_latest_is_superseded_and_the_latest_is_not() -> None:
    assert is_superseded(room_scheduled_until=130.0, check_due_at=120.0)
    assert not is_superseded(room_scheduled_until=130.0, check_due_at=130.0)
    assert not is_superseded(room_scheduled_until=0.0, check_due_at=130.0)


def test_a_check_written_within_a_tick_is_stamped_at_the_start_of_the_tick() -> None:
    assert check_timestamp(1234.56, tick_s=1.0) == 1234.0
    assert check_timestamp(1234.56, tick_s=0.0) == 1234.56


def test_recovery_reads_heartbeats_from_the_longest_timeout_plus_a_margin_ago() -> None:
    assert heartbeat_replay_start(now=1000.0, max_timeout_s=20.0, margin_s=30.0) == 950.0


times = st.floats(min_value=0, max_value=1e6, allow_nan=False)
timeouts = st.floats(min_value=1.0, max_value=3600.0)
gaps = st.floats(min_value=0, max_value=100.0)


@given(last_seen=times, timeout=timeouts, elapsed=gaps, lag=gaps)
def test_no_rule_ever_expires_a_ticket_heard_from_within_its_timeout(
    last_seen: float, timeout: float, elapsed: float, lag: float
) -> None:
    now = last_seen + elapsed
    ticket = TicketClock(last_seen=last_seen)
    kwargs = {"timeout_s": timeout, "now": now, "heard_until": now - lag, "grace_s": GRACE}
    decisions = [
        decide_check(ticket, next_check_due=now + DELAY, resend_after_s=DELAY, **kwargs),
        decide_look(ticket, next_check_due=now + DELAY, retry_s=0.02, **kwargs),
    ]
    if elapsed < timeout:
        assert not any(d.expire for d in decisions)


@given(last_seen=times, timeout=timeouts, now_offset=gaps)
def test_a_fresh_ticket_whose_deadline_falls_before_the_next_check_always_gets_a_look_no_later_than_deadline_plus_grace(
    last_seen: float, timeout: float, now_offset: float
) -> None:
    now = last_seen + min(now_offset, timeout * 0.99)
    next_due = now + DELAY
    decision = decide_check(
        TicketClock(last_seen=last_seen),
        timeout_s=timeout,
        now=now,
        next_check_due=next_due,
        heard_until=now,
        grace_s=GRACE,
        resend_after_s=DELAY,
    )
    deadline_look = first_look(last_seen, timeout, GRACE)
    if deadline_look < next_due:
        assert decision.look_at is not None and decision.look_at <= deadline_look
    else:
        assert decision.look_at is None
    assert not decision.expire
