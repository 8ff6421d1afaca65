"""The latest statistics per room, tailed from ``waitroom.room-stats`` (published by the stats service).

The API reads the recent admission pace here (``seconds_per_admission``) to estimate each waiting
ticket's wait, and serves the latest snapshot and the recent 1-minute windows to operators. The
tail starts at the end of the topic: snapshots arrive every few seconds, so a fresh replica knows
each live room's numbers one snapshot interval after it starts, without reading days of history.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from waitroom_events.stats import RoomStats
from waitroom_platform.consume import Record
from waitroom_platform.settings import KafkaSettings
from waitroom_platform.tail import TailedView, TopicTail

log = structlog.get_logger()

#: closed 1-minute windows kept per room for the admin call
RECENT_WINDOWS = 10


class StatsView(TailedView):
    name = "stats-view"

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.latest: dict[str, RoomStats] = {}
        self._windows: dict[str, deque[RoomStats]] = {}
        self._tail = TopicTail(kafka, topic, RoomStats, self._apply_decoded, from_beginning=False)
        self._pace_listeners: list[Callable[[str], None]] = []

    def add_pace_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(room_id)`` when a room's admission pace changes (its waits' estimates do)."""
        self._pace_listeners.append(listener)

    def _apply_decoded(self, records: Sequence[tuple[Record, RoomStats]]) -> None:
        for _, stats in records:
            self.apply(stats)

    def apply(self, stats: RoomStats) -> None:
        current = self.latest.get(stats.room_id)
        if current is not None and current.at > stats.at:
            return  # an older snapshot (a replica's or a replay's) arriving late
        self.latest[stats.room_id] = stats
        if current is None or current.seconds_per_admission != stats.seconds_per_admission:
            for listener in self._pace_listeners:
                listener(stats.room_id)
        windows = self._windows.setdefault(stats.room_id, deque(maxlen=RECENT_WINDOWS))
        if windows and windows[-1].window_start == stats.window_start:
            windows[-1] = stats  # the same closed minute: keep the newest report of it
        else:
            windows.append(stats)

    def seconds_per_admission(self, room_id: str) -> float | None:
        stats = self.latest.get(room_id)
        return None if stats is None else stats.seconds_per_admission

    def describe(self, room_id: str) -> dict[str, Any]:
        """The admin view: the latest snapshot and the recent closed 1-minute windows, newest first."""
        stats = self.latest.get(room_id)
        if stats is None:
            return {
                "room_id": room_id,
                "snapshot": None,
                "windows_1m": [],
                "detail": "no statistics yet: the stats service publishes each live room's numbers periodically",
            }
        snapshot = stats.to_dict()
        windows = [
            {
                "start": s.window_start,
                "end": s.window_start + 60,
                "joins": s.joins_1m,
                "admissions": s.admissions_1m,
                "leaves": s.leaves_1m,
                "expiries_waiting": s.expiries_waiting_1m,
                "expiries_admitted": s.expiries_admitted_1m,
            }
            for s in reversed(self._windows.get(room_id, ()))
        ]
        return {"room_id": room_id, "snapshot": snapshot, "windows_1m": windows}
