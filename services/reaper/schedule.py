"""The durable schedule: one expiry check per room with live tickets, on the delay topic.

A room's first live ticket starts its chain (:meth:`Schedule.start_chains`); each due check looks
at every live ticket of its room with the pure rule, arms looks for deadlines that come before the
room's next check, writes that next check, and ends the chain once the room is empty. A check
older than the room's latest one (re-delivered after a crash) is dropped as superseded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from waitroom_core.expiry import check_timestamp, decide_check, is_superseded
from waitroom_events.reaper import ExpiryCheck
from waitroom_events.topics import TopicSpec
from waitroom_platform.consume import Poison, Record, decode_as
from waitroom_platform.delayed import due_at
from waitroom_platform.kafka import extract_context
from waitroom_reaper.looks import Looks
from waitroom_reaper.options import Metrics, ReaperOptions
from waitroom_reaper.output import Expiry, Output, settle
from waitroom_reaper.state import Owned, PartitionState

tracer = trace.get_tracer("waitroom.reaper")


class Schedule:
    def __init__(
        self,
        owned: Owned,
        looks: Looks,
        output: Output,
        metrics: Metrics,
        options: ReaperOptions,
        topic: TopicSpec,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``topic``: the delay topic the checks are on."""
        if topic.delay_s is None:
            raise ValueError(f"{topic.name} is not a delay topic")
        self.topic = topic.name
        self.delay_s = topic.delay_s
        self._owned = owned
        self._looks = looks
        self._output = output
        self._metrics = metrics
        self._options = options
        self._clock = clock

    def next_check(self, now: float) -> tuple[int, float]:
        """The timestamp of a check written now, and when it will be due (exactly as ``due_at`` reads it)."""
        timestamp_ms = int(check_timestamp(now, self._options.check_tick_s) * 1000)
        return timestamp_ms, timestamp_ms / 1000.0 + self.delay_s

    async def on_due(self, partition: int, records: Sequence[Record]) -> None:
        """The delayed consumer's handler: one span for the partition's due checks, linked to their writers."""
        links = [Link(context) for context in map(_span_context, records) if context.is_valid]
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": self.topic,
            "messaging.destination.partition.id": str(partition),
            "messaging.batch.message_count": len(records),
            "messaging.consumer.group.name": self._options.group_id,
        }
        with tracer.start_as_current_span("reaper check", kind=SpanKind.CONSUMER, links=links, attributes=attributes):
            await self.check_due(partition, records)

    async def check_due(self, partition: int, records: Sequence[Record]) -> None:
        """Handle a partition's due check records; returns once their outputs are on the broker."""
        state = self._owned.get(partition)
        if state is None:
            return
        options = self._options
        now = self._clock()
        timestamp_ms, next_due = self.next_check(now)
        again: list[str] = []
        expiries: list[Expiry] = []
        poison: list[Poison] = []
        for record in records:
            check: ExpiryCheck | BaseException = decode_as(record, ExpiryCheck)
            if isinstance(check, BaseException):
                poison.append((record, check))
                continue
            self._metrics.check_records_handled += 1
            room = state.rooms.get(check.room_id)
            if room is None or is_superseded(room.scheduled_until, due_at(record, self.delay_s)):
                continue  # a duplicate replayed after a crash: the room's latest check goes on
            if not room.tickets:
                room.scheduled_until = 0.0  # nobody left to check: the next issued ticket starts a new chain
                continue
            room.scheduled_until = next_due
            again.append(check.room_id)
            for ticket_id, entry in room.tickets.items():
                self._metrics.ticket_checks += 1
                decision = decide_check(
                    entry.clock(),
                    timeout_s=room.timeout_s,
                    now=now,
                    next_check_due=next_due,
                    heard_until=state.heard_until,
                    grace_s=options.heartbeat_grace_s,
                    resend_after_s=options.resend_expire_after_s,
                )
                if decision.expire:
                    expiries.append((check.room_id, ticket_id, entry))
                if decision.look_at is not None:
                    self._looks.arm(partition, check.room_id, ticket_id, entry, decision.look_at)
        if poison:
            await self._output.dead_letter(poison)
        deliveries = await self._output.write_checks(partition, again, now, timestamp_ms)
        deliveries += await self._output.request_expiries(partition, expiries, now)
        await settle(deliveries)

    async def start_chains(self, state: PartitionState) -> None:
        """Write the first check of rooms that just got their first live ticket."""
        rooms, state.unscheduled = sorted(state.unscheduled), set()
        now = self._clock()
        timestamp_ms, due = self.next_check(now)
        started = []
        for room_id in rooms:
            room = state.rooms.get(room_id)
            if room is None or not room.tickets or room.scheduled_until:
                continue
            room.scheduled_until = due
            started.append(room_id)
            for ticket_id, entry in room.tickets.items():
                look = self._looks.first_look(entry, room)
                if look < due:
                    self._looks.arm(state.partition, room_id, ticket_id, entry, look)
        await settle(await self._output.write_checks(state.partition, started, now, timestamp_ms))


def _span_context(record: Record) -> trace.SpanContext:
    return trace.get_current_span(extract_context(record.headers)).get_span_context()
