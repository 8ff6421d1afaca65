"""The reaper: expires tickets that stopped heartbeating, through the delay topic.

Per partition ``p`` it owns (a consumer group over the delay topic), the reaper follows partition
``p`` of room-events and heartbeats, which hold the same rooms (co-partitioned topics). It is a few
parts, each a module, sharing the owned partitions' state (``state.Owned``) on one event loop:

* ``recovery``: on assignment, rebuilds a partition from the log before any of its checks is
  handled, so a crash loses no check and expires nobody who heartbeated;
* ``feed``: the heartbeat feed, folding room-events and heartbeats as they are written;
* ``schedule``: the durable checks, one per room with live tickets, each due one judging the room;
* ``looks``: the final approach, an in-memory look at a deadline that comes before the next check
  (docs/adr/0003-reaper-precision.md);
* ``output``: what they write, checks and ``ExpireRequested`` commands (the sequencer, the room's
  only writer, emits ``TicketExpired`` and admits the next ticket in the same step).

The decisions are the pure rules of ``waitroom_core.expiry``. :class:`Reaper` is the component
that holds the delay topic's group: its due records go to the schedule, its assignments to
recovery. It is ready once it owns and has rebuilt its partitions.
"""

from __future__ import annotations

import structlog

from waitroom_platform.delayed import DelayedConsumer
from waitroom_platform.runtime import Component
from waitroom_platform.settings import KafkaSettings
from waitroom_reaper.options import Metrics, ReaperOptions
from waitroom_reaper.recovery import Recovery
from waitroom_reaper.schedule import Schedule
from waitroom_reaper.state import Owned

log = structlog.get_logger()


class Reaper(Component):
    name = "reaper"

    def __init__(
        self,
        kafka: KafkaSettings,
        options: ReaperOptions,
        owned: Owned,
        schedule: Schedule,
        recovery: Recovery,
        metrics: Metrics,
    ) -> None:
        self._owned = owned
        self._recovery = recovery
        self.metrics = metrics
        self._delayed = DelayedConsumer(
            kafka,
            schedule.topic,
            schedule.delay_s,
            schedule.on_due,
            group_id=options.group_id,
            listener=self,
            session_timeout_ms=options.session_timeout_ms,
        )

    def ready(self) -> bool:
        return self._delayed.ready.is_set()

    def live_tickets(self) -> int:
        return sum(state.live for state in list(self._owned.values()))

    def owned_partitions(self) -> list[int]:
        return sorted(self._owned)

    async def run(self) -> None:
        await self._delayed.run()

    # ---------------------------------------------------------------- the delayed consumer's listener

    async def on_assigned(self, partitions: list[int]) -> None:
        for partition in partitions:
            await self._recovery.take_over(partition, checks_from=await self._delayed.committed(partition))

    async def on_revoked(self, partitions: list[int]) -> None:
        for partition in partitions:
            self._recovery.release(partition)
        log.info("reaper_partitions_released", partitions=partitions)
