"""How a reaper is tuned (from its settings) and what it counts (on ``/metrics``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReaperOptions:
    group_id: str
    heartbeat_group_id: str
    heartbeat_grace_s: float = 0.25
    check_tick_s: float = 1.0
    resend_expire_after_s: float = 10.0
    recovery_margin_s: float = 30.0
    session_timeout_ms: int = 6_000


@dataclass
class Metrics:
    """Counters since start, shared by the reaper's parts (one event loop: no locking)."""

    heartbeats: int = 0
    room_events: int = 0
    check_records_handled: int = 0
    ticket_checks: int = 0
    check_records_written: int = 0
    looks: int = 0
    expiries_requested: int = 0
    dead_lettered: int = 0
    recoveries: int = 0
    last_recovery_s: float = 0.0
