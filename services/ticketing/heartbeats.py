"""Heartbeat coalescing: one ``HeartbeatBatch`` record per room per window, not one per visitor.

A crowd of waiting visitors is mostly heartbeats (one every interval each). The API collects the
heartbeats of a room for ``window_s`` (at most 100 ms) and writes them as one record, so Kafka, the
reaper's decoder and the API's producer see one record per room per window.

**When a heartbeat may answer before Kafka acknowledged it.** Losing a heartbeat is harmless when
the visitor's next one still lands before the reaper could expire it. The reaper expires a ticket
at ``L + timeout`` where ``L`` is the stamp of its last heartbeat that reached the log. So a
heartbeat answers at once when ``now + interval + window + publish_timeout < L + timeout``: if this
one is lost, the next (sent one interval later, itself given the window and the publish timeout to
land) still arrives in time. Otherwise (the first heartbeat of a ticket, a visitor coming back late,
or the log failing so that ``L`` stops moving) the answer waits for the acknowledgement, and a
failure answers 503 so the visitor retries. A process that dies loses at most one window of
unacknowledged heartbeats, each of which satisfied that rule.

A batch's ``at`` is the time it is handed to the producer, not the time of its first heartbeat:
the reaper takes a heartbeats partition as heard up to the timestamp of the last record it read
(minus ``WAITROOM_REAPER_HEARTBEAT_GRACE_S``), which is only sound if a record's ``at`` is close to
its own timestamp. Stamping at the write overstates a visitor's last sign of life by the window
(and by any stall of the process before the write), which can only delay an expiry, never cause a
wrong one. Stamping with the first heartbeat instead was caught by the e2e test under load: a
batch written seconds late carried an old stamp behind records the reaper had already read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from waitroom_events.heartbeats import Heartbeat, HeartbeatBatch
from waitroom_platform.runtime import Component

log = structlog.get_logger()

#: a batch is written early once it holds this many tickets (~40 bytes each: well under a MB)
MAX_BATCH_TICKETS = 2000
#: the most any window may be: the reaper's grace must cover it
MAX_WINDOW_S = 0.1
#: acknowledged stamps older than this are dropped from memory (no room's timeout is longer)
FORGET_AFTER_S = 3600.0


@dataclass(slots=True)
class _Pending:
    ticket_ids: dict[str, None] = field(default_factory=dict)  # ordered set: each ticket once
    done: asyncio.Future[None] | None = None
    timer: asyncio.TimerHandle | None = None


Send = Callable[[HeartbeatBatch | Heartbeat], Awaitable[None]]


class HeartbeatCoalescer(Component):
    """Collects heartbeats per room and writes a batch per window; knows each ticket's last
    acknowledged stamp (for the answer-at-once rule above)."""

    name = "heartbeats"

    def __init__(
        self,
        send: Send,
        *,
        window_s: float,
        publish_timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 <= window_s <= MAX_WINDOW_S:
            raise ValueError(f"the heartbeat window must be between 0 and {MAX_WINDOW_S} s")
        self._send = send
        self.window_s = window_s
        self._publish_timeout_s = publish_timeout_s
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._flushing: set[asyncio.Task[None]] = set()
        #: ticket id -> stamp of its last heartbeat the log acknowledged
        self.acknowledged: dict[str, float] = {}
        self.records_written = 0
        self.heartbeats_written = 0
        self._last_sweep = clock()
        self._drained = asyncio.Event()

    # ---------------------------------------------------------------- the rule

    def may_answer_at_once(self, ticket_id: str, now: float, *, interval_s: float, timeout_s: float) -> bool:
        last = self.acknowledged.get(ticket_id)
        if last is None:
            return False
        return now + interval_s + self.window_s + self._publish_timeout_s < last + timeout_s

    def heard_recently(self, ticket_id: str, now: float, *, interval_s: float) -> bool:
        """A heartbeat sooner than half the interval after the last acknowledged one adds nothing:
        it is answered from memory, without a new record (a client looping on heartbeats costs
        the log nothing more)."""
        last = self.acknowledged.get(ticket_id)
        return last is not None and 0 <= now - last < interval_s / 2

    # ---------------------------------------------------------------- collecting

    def add(self, room_id: str, ticket_id: str) -> asyncio.Future[None]:
        """Queue a heartbeat; the future resolves once the log acknowledged its record."""
        loop = asyncio.get_running_loop()
        pending = self._pending.get(room_id)
        if pending is None:
            pending = self._pending[room_id] = _Pending(done=loop.create_future())
            if self.window_s > 0:
                pending.timer = loop.call_later(self.window_s, self._flush, room_id)
        pending.ticket_ids[ticket_id] = None
        assert pending.done is not None
        done = pending.done
        if self.window_s == 0 or len(pending.ticket_ids) >= MAX_BATCH_TICKETS:
            self._flush(room_id)
        return done

    def forget(self, ticket_id: str) -> None:
        self.acknowledged.pop(ticket_id, None)

    def _flush(self, room_id: str) -> None:
        pending = self._pending.pop(room_id, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._write(room_id, pending))
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _write(self, room_id: str, pending: _Pending) -> None:
        assert pending.done is not None
        ticket_ids = list(pending.ticket_ids)
        at = self._clock()  # see the module's docstring: the time of the write
        message: HeartbeatBatch | Heartbeat
        if len(ticket_ids) == 1:
            # one heartbeat in the window: the v1 record (readers that predate batches read it too)
            message = Heartbeat(room_id=room_id, ticket_id=ticket_ids[0], at=at)
        else:
            message = HeartbeatBatch(room_id=room_id, ticket_ids=ticket_ids, at=at)
        try:
            await asyncio.wait_for(self._send(message), self._publish_timeout_s)
        except BaseException as exc:  # noqa: BLE001 - every waiter learns of the failure
            if not pending.done.done():
                pending.done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
                pending.done.exception()  # retrieved: nobody may be waiting (answered at once)
            log.warning("heartbeats_not_written", room_id=room_id, tickets=len(ticket_ids), error=type(exc).__name__)
            if not isinstance(exc, Exception):
                raise
            return
        self.records_written += 1
        self.heartbeats_written += len(ticket_ids)
        acknowledged = self.acknowledged
        for ticket_id in ticket_ids:
            if acknowledged.get(ticket_id, 0.0) < at:
                acknowledged[ticket_id] = at
        if not pending.done.done():
            pending.done.set_result(None)
        self._sweep(at)

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < 60.0:
            return
        self._last_sweep = now
        cutoff = now - FORGET_AFTER_S
        for ticket_id in [t for t, at in self.acknowledged.items() if at < cutoff]:
            del self.acknowledged[ticket_id]

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        await self._drained.wait()  # nothing to do between requests; ends once drained

    async def drain(self) -> None:
        """Write what is collected now (a stopping API loses no heartbeat it has answered)."""
        for room_id in list(self._pending):
            self._flush(room_id)
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)
        self._drained.set()

    async def stop(self) -> None:
        await self.drain()

    def describe(self) -> dict[str, float | int]:
        return {
            "window_s": self.window_s,
            "records_written": self.records_written,
            "heartbeats_written": self.heartbeats_written,
            "tickets_acknowledged": len(self.acknowledged),
        }
