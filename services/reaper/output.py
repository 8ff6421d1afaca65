"""What the reaper writes: expiry checks on the delay topic, expiry requests, dead letters.

Everything goes through two small ports, so a test can record it: a :class:`Sender` (the
platform's ``Publisher``: codec, trace headers, PRODUCER span) and a :data:`DeadLetters` function
(``send_to_dead_letter`` bound to the producer). Sends return delivery futures; a caller gathers
them with :func:`settle` before it lets the consumer commit past what caused them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeAlias

import structlog
from opentelemetry import trace
from opentelemetry.trace import Link

from waitroom_events.base import Message
from waitroom_events.commands import ExpireRequested
from waitroom_events.reaper import ExpiryCheck
from waitroom_events.topics import TopicRegistry
from waitroom_platform.consume import Poison, Record
from waitroom_reaper.options import Metrics
from waitroom_reaper.state import TicketEntry

log = structlog.get_logger()
tracer = trace.get_tracer("waitroom.reaper")

#: a record queued on the producer; awaiting it waits until the broker has the record
Delivery: TypeAlias = Awaitable[Any]
#: parks a record on ``<topic>.dlq`` unchanged with the error in headers; returns its delivery
DeadLetters: TypeAlias = Callable[[Record, BaseException | str], Awaitable[Delivery]]
#: a ticket found silent: room, ticket and what the reaper knows of it
Expiry: TypeAlias = tuple[str, str, TicketEntry]


class Sender(Protocol):
    """Queues a message as a record (``waitroom_platform.kafka.Publisher.send``)."""

    async def send(
        self,
        topic: str,
        message: Message,
        *,
        partition: int | None = None,
        headers: Iterable[tuple[str, bytes]] = (),
        timestamp_ms: int | None = None,
    ) -> Delivery: ...


async def settle(deliveries: Sequence[Delivery]) -> None:
    """Wait until the broker has every queued record."""
    if deliveries:
        await asyncio.gather(*deliveries)


class Output:
    def __init__(self, sender: Sender, dead_letters: DeadLetters, topics: TopicRegistry, metrics: Metrics) -> None:
        self._sender = sender
        self._dead_letters = dead_letters
        self._checks_topic = topics.reaper_delay.name
        self._commands_topic = topics.commands.name
        self._metrics = metrics

    async def write_checks(self, partition: int, rooms: Sequence[str], now: float, timestamp_ms: int) -> list[Delivery]:
        """Queue one check per room, stamped ``timestamp_ms`` (due that plus the topic's delay)."""
        deliveries = []
        for room_id in rooms:
            check = ExpiryCheck(room_id=room_id, scheduled_at=now)
            deliveries.append(
                await self._sender.send(self._checks_topic, check, partition=partition, timestamp_ms=timestamp_ms)
            )
            self._metrics.check_records_written += 1
        return deliveries

    async def request_expiries(self, partition: int, expiries: Sequence[Expiry], now: float) -> list[Delivery]:
        """Queue an ``ExpireRequested`` per silent ticket and note when it was asked for."""
        deliveries = []
        for room_id, ticket_id, entry in expiries:
            entry.expire_sent_at = now
            command = ExpireRequested(
                room_id=room_id, ticket_id=ticket_id, requested_at=now, last_heartbeat_at=entry.last_heartbeat_at
            )
            silent_s = round(now - entry.last_seen, 3)
            # A child of the ticket's issue, so the join's trace shows its expiry; linked to the check
            # (or nothing, for a look) that found the silence.
            current = trace.get_current_span().get_span_context()
            with tracer.start_as_current_span(
                "reaper expire",
                context=entry.trace,
                links=[Link(current)] if current.is_valid else None,
                attributes={
                    "waitroom.room_id": room_id,
                    "waitroom.ticket_id": ticket_id,
                    "waitroom.silent_s": silent_s,
                },
            ):
                deliveries.append(await self._sender.send(self._commands_topic, command, partition=partition))
            self._metrics.expiries_requested += 1
            log.info(
                "expiry_requested",
                room_id=room_id,
                ticket_id=ticket_id,
                silent_s=silent_s,
                last_heartbeat_at=entry.last_heartbeat_at,
            )
        return deliveries

    async def dead_letter(self, poison: Sequence[Poison]) -> None:
        """Park undecodable records and wait until the broker has them."""
        deliveries = [await self._dead_letters(record, error) for record, error in poison]
        self._metrics.dead_lettered += len(poison)
        await settle(deliveries)
