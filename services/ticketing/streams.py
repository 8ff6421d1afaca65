"""The ticket's live stream: ``GET /v1/rooms/{room_id}/tickets/{ticket_id}/events`` (Server-Sent Events).

A waiting visitor holds one connection and sends nothing else: the API pushes the ticket's state,
position and entry token as they change, and heartbeats on the visitor's behalf while the
connection is open: the hub passes every open stream's ticket of a room to the same per-room
coalescer as the heartbeat call once per room interval (so a crowd of streams costs a few
``HeartbeatBatch`` records per room per interval, and no stream task wakes up for it).

**Fan-out.** :class:`StreamHub` listens to the read model: each batch of room events is read once;
an event that names a watched ticket (issued, admitted, left, expired) wakes that ticket's streams
at once, and an event that moves everyone's position (an admission, a departure, a configuration)
marks the room, whose streams are woken together at most once a second (``batch_s``); so does a
change of the room's admission pace read by the stats view (every estimate changes). A woken
stream reads the ticket from the read model and sends it only if what the visitor sees changed.

**Events.** ``retry:`` first; ``event: ticket`` (the status call's JSON) on connect, on every
change and after every entry-token refresh (every ``ttl/2`` once admitted, so the visitor always
holds a valid one); a comment every ``COMMENT_S`` so proxies keep the connection; ``event: ended``
and the end of the response once the ticket has expired or left. Each event's ``id:`` names the
view it carries (``w<position>.<estimate>``, ``a<token digest>``), so a reconnect whose
``Last-Event-ID`` is the current view is not sent it again.

**Half-open connections.** A visitor whose network vanishes without a FIN must not be kept alive
by a stream the server believes open. The listening socket is given TCP keepalive and
``TCP_USER_TIMEOUT`` (:func:`bound_half_open`, inherited by every accepted connection): data left
unacknowledged for ``USER_TIMEOUT_S`` aborts the connection (uvicorn then ends the response, the
stream leaves the hub, its heartbeats stop), and the stream writes at least every ``COMMENT_S``.
Worst case, from the moment the peer vanishes to the last heartbeat sent on its behalf:
``COMMENT_S + USER_TIMEOUT_S + interval`` (15 + 10 + 5 s with the room defaults); the room's
timeout then applies as usual, so such a visitor is expired at most 50 s (defaults) after it
vanished, against 20 s for one that closed its connection (docs/api.md).

The ticket token may come as ``Authorization: Bearer`` or, for the browser's ``EventSource`` (which
cannot set headers), as the ``ticket_token`` query parameter. :class:`HideTicketToken` takes it out
of the query string before anything else (access log, tracing) sees the URL.
"""

from __future__ import annotations

import asyncio
import socket
import time
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

import orjson
import structlog
from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from waitroom_core.room import RoomState, Ticket, TicketState
from waitroom_events.events import RoomConfigured, RoomEvent, TicketAdmitted, TicketExpired, TicketIssued, TicketLeft
from waitroom_platform.runtime import Component
from waitroom_ticketing.api import ApiError, RoomId, Services, Svc, TicketId, _authorized_ticket, _ended

log = structlog.get_logger()

#: a comment at least this often: proxies (nginx: 60 s) keep a connection that carries data
COMMENT_S = 15.0
#: the browser's reconnect delay after a dropped stream
RETRY_MS = 2000
#: position updates of one room go out together, at most this often
BATCH_S = 1.0
#: unacknowledged data for this long aborts the connection (see the module's docstring)
USER_TIMEOUT_S = 10
#: a room's position batch waits at least this long, so the admitted tickets' own pushes go first
OWN_FIRST_S = 0.01
#: how often the hub looks for rooms whose streams are due a heartbeat
BEAT_TICK_S = 0.25
#: a refresh wakes this long after the cached entry token turned ttl/2 old
REFRESH_MARGIN_S = 0.05
#: a stream opened right after the join waits this long for its ticket to be issued
PENDING_S = 30.0
SCOPE_TOKEN = "waitroom.ticket_token"  # noqa: S105 - a name, not a secret
TOKEN_PARAM = "ticket_token"  # noqa: S105 - a name, not a secret
STREAM_SUFFIX = "/events"

#: events that change the position or estimate of every waiting ticket of their room
_MOVES_ROOM = (TicketAdmitted, TicketLeft, TicketExpired, RoomConfigured)
#: events that change their own ticket
_MOVES_TICKET = (TicketIssued, TicketAdmitted, TicketLeft, TicketExpired)


class Watch:
    """One open stream's doorbell: the hub sets it, the stream wakes and rereads its ticket."""

    __slots__ = ("room_id", "ticket_id", "bell")

    def __init__(self, room_id: str, ticket_id: str) -> None:
        self.room_id = room_id
        self.ticket_id = ticket_id
        self.bell = asyncio.Event()


class StreamHub(Component):
    """Which streams are open, per room and ticket; rings only the streams an event affects."""

    name = "ticket_streams"

    def __init__(self, *, batch_s: float = BATCH_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._rooms: dict[str, dict[str, set[Watch]]] = {}
        self._batch_s = batch_s
        self._clock = clock
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._last_batch: dict[str, float] = {}
        self.closing = False
        self.batches = 0
        self._services: Services | None = None
        self._next_beat: dict[str, float] = {}
        self.heartbeats_sent = 0

    def attach(self, services: Services) -> None:
        """Heartbeat through ``services`` for every open stream (``run()``)."""
        self._services = services

    # ---------------------------------------------------------------- streams come and go

    def watch(self, room_id: str, ticket_id: str) -> Watch:
        watch = Watch(room_id, ticket_id)
        self._rooms.setdefault(room_id, {}).setdefault(ticket_id, set()).add(watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        tickets = self._rooms.get(watch.room_id)
        if tickets is None:
            return
        watches = tickets.get(watch.ticket_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del tickets[watch.ticket_id]
        if not tickets:
            del self._rooms[watch.room_id]
            self._last_batch.pop(watch.room_id, None)
            self._next_beat.pop(watch.room_id, None)
            timer = self._timers.pop(watch.room_id, None)
            if timer is not None:
                timer.cancel()

    @property
    def open_streams(self) -> int:
        return sum(len(w) for tickets in self._rooms.values() for w in tickets.values())

    # ---------------------------------------------------------------- the read model's listener

    def on_events(self, events: Sequence[RoomEvent]) -> None:
        """Called by the read model with every batch it applied, in log order."""
        rooms = self._rooms
        for event in events:
            tickets = rooms.get(event.room_id)
            if tickets is None:
                continue
            if isinstance(event, _MOVES_TICKET):
                for watch in tickets.get(event.ticket_id, ()):
                    watch.bell.set()
            if isinstance(event, _MOVES_ROOM) and event.room_id not in self._timers:
                self._schedule(event.room_id)

    def room_changed(self, room_id: str) -> None:
        """Something every waiting ticket of the room shows changed (the admission pace, so the
        estimates): its streams are woken with the room's next position batch."""
        if room_id in self._rooms and room_id not in self._timers:
            self._schedule(room_id)

    def _schedule(self, room_id: str) -> None:
        due = self._last_batch.get(room_id, float("-inf")) + self._batch_s
        # never at once: the streams of the event's own tickets (an admission) go first
        delay = max(OWN_FIRST_S, due - self._clock())
        self._timers[room_id] = asyncio.get_running_loop().call_later(delay, self._ring_room, room_id)

    def _ring_room(self, room_id: str) -> None:
        self._timers.pop(room_id, None)
        self._last_batch[room_id] = self._clock()
        self.batches += 1
        for watches in self._rooms.get(room_id, {}).values():
            for watch in watches:
                watch.bell.set()

    # ---------------------------------------------------------------- heartbeats on the visitors' behalf

    async def run(self) -> None:
        """Every room's open streams heartbeat together, once per room interval: one pass over
        the room's watched tickets into the coalescer (no stream task wakes up for it)."""
        while not self.closing:  # drain() ends it (the supervisor waits for that, then stops the hub)
            self.beat_due(self._clock())
            await asyncio.sleep(BEAT_TICK_S)

    def beat_due(self, now: float) -> None:
        services = self._services
        if services is None:
            return
        for room_id, tickets in self._rooms.items():
            if now < self._next_beat.get(room_id, 0.0):
                continue
            room = services.read_model.room(room_id)
            interval = room.config.heartbeat_interval_s if room is not None and room.config is not None else 1.0
            self._next_beat[room_id] = now + interval
            for ticket_id in tickets:
                beat(services, room_id, ticket_id)
            self.heartbeats_sent += len(tickets)

    # ---------------------------------------------------------------- lifecycle

    async def drain(self) -> None:
        """End every open stream, so the HTTP server's drain does not wait for them."""
        self.closing = True
        for tickets in self._rooms.values():
            for watches in tickets.values():
                for watch in watches:
                    watch.bell.set()

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def describe(self) -> dict[str, int]:
        return {
            "open_streams": self.open_streams,
            "rooms": len(self._rooms),
            "position_batches": self.batches,
            "heartbeats_sent": self.heartbeats_sent,
        }


# -------------------------------------------------------------------------------------------- SSE


def sse(event: str | None, data: Any = None, event_id: str | None = None) -> bytes:
    """One Server-Sent Event (``data`` as one line of JSON)."""
    parts = []
    if event_id is not None:
        parts.append(b"id: " + event_id.encode())
    if event is not None:
        parts.append(b"event: " + event.encode())
    parts.append(b"data: " + orjson.dumps(data))
    return b"\n".join(parts) + b"\n\n"


def view_id(view: dict[str, Any]) -> str:
    """The ``id:`` of a ticket event: equal ids carry the same view (see the module's docstring)."""
    if view["state"] == TicketState.ADMITTED.value:
        return f"a{zlib.crc32((view['entry_token'] or '').encode()):08x}"
    return f"w{view['position']}.{view['estimated_wait_s']}"


async def ticket_events(
    svc: Services, hub: StreamHub, room_id: str, ticket_id: str, last_event_id: str | None
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    watch = hub.watch(room_id, ticket_id)
    beat(svc, room_id, ticket_id)  # at once: from now on the stream is the visitor's sign of life
    sent_id = last_event_id
    started = loop.time()
    next_comment = started + COMMENT_S
    next_refresh = float("inf")
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        while not hub.closing:
            found = svc.read_model.ticket(room_id, ticket_id)
            now = loop.time()
            if found is None:
                if now - started > PENDING_S:
                    yield sse("ended", {"ticket_id": ticket_id, "room_id": room_id, "state": "unknown"}, "ended")
                    return
            else:
                room, ticket = found
                if not ticket.state.live:
                    yield sse("ended", _ended_view(room, ticket), "ended")
                    return
                view = svc.ticket_view(room, ticket)
                event_id = view_id(view)
                if event_id != sent_id:
                    yield sse("ticket", view, event_id)
                    sent_id = event_id
                    next_comment = now + COMMENT_S
                if ticket.state is TicketState.ADMITTED and (next_refresh == float("inf") or now >= next_refresh):
                    # the signer hands out a new token once the cached one is ttl/2 old
                    next_refresh = now + svc.signer.ttl_s / 2 + REFRESH_MARGIN_S
            if now >= next_comment:
                # proxies keep a connection that carries data; and a write is what notices a dead peer
                yield b": keep-alive\n\n"
                next_comment = now + COMMENT_S
            watch.bell.clear()
            try:
                async with asyncio.timeout(max(0.0, min(next_comment, next_refresh) - loop.time())):
                    await watch.bell.wait()
            except TimeoutError:
                pass
    finally:
        hub.unwatch(watch)


def beat(svc: Services, room_id: str, ticket_id: str) -> None:
    written = svc.heartbeats.add(room_id, ticket_id)
    # A failed write is logged by the coalescer; the next interval tries again.
    written.add_done_callback(lambda f: f.cancelled() or f.exception())


def _ended_view(room: RoomState, ticket: Ticket) -> dict[str, Any]:
    return {
        "ticket_id": ticket.ticket_id,
        "room_id": room.room_id,
        "queue_no": ticket.queue_no,
        "state": ticket.state.value,
    }


# -------------------------------------------------------------------------------------------- HTTP


def mount_streams(app: FastAPI, services: Services, hub: StreamHub) -> ASGIApp:
    """The stream's route on the public ``app``; returns the ASGI app to serve (``app`` behind
    :class:`HideTicketToken`). The hub is registered on the read model here."""
    services.read_model.add_listener(hub.on_events)
    if services.stats is not None:
        services.stats.add_pace_listener(hub.room_changed)
    hub.attach(services)
    router = APIRouter(tags=["visitors"])

    @router.get(
        "/v1/rooms/{room_id}/tickets/{ticket_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
    )
    async def ticket_stream(
        room_id: RoomId,
        ticket_id: TicketId,
        request: Request,
        svc: Svc,
        authorization: Annotated[str | None, Header()] = None,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
        ticket_token: Annotated[
            str | None, Query(max_length=256, description="the ticket token, for EventSource (never logged)")
        ] = None,
    ) -> StreamingResponse:
        """The ticket's live stream: ``ticket`` events, then ``ended``; heartbeats on the visitor's
        behalf while open. The ticket token as ``Authorization: Bearer`` or ``ticket_token``."""
        token = request.scope.get(SCOPE_TOKEN) or ticket_token
        if authorization is None and token:
            authorization = f"Bearer {token}"
        found = _authorized_ticket(svc, room_id, ticket_id, authorization)
        if found is not None and not found[1].state.live:
            raise _ended(found[1])
        if hub.closing:
            raise ApiError(503, "stopping", "this replica is stopping; reconnect", {"Retry-After": "1"})
        return StreamingResponse(
            ticket_events(svc, hub, room_id, ticket_id, last_event_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    app.include_router(router)
    return HideTicketToken(app)


class HideTicketToken:
    """Moves ``ticket_token`` out of a stream request's query string (into the ASGI scope) before
    any middleware, log or trace records the URL."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = scope.get("query_string", b"") if scope["type"] == "http" else b""
        if b"ticket_token" in query and scope["path"].endswith(STREAM_SUFFIX):
            pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            tokens = [value for key, value in pairs if key == TOKEN_PARAM]
            rest = [(key, value) for key, value in pairs if key != TOKEN_PARAM]
            hidden = tokens[0] if tokens else None
            scope = {**scope, "query_string": urlencode(rest).encode("latin-1"), SCOPE_TOKEN: hidden}
        await self.app(scope, receive, send)


def bound_half_open(sock: socket.socket) -> None:
    """TCP keepalive and ``TCP_USER_TIMEOUT`` on a listening socket (Linux: accepted connections
    inherit them), so a peer gone without a FIN is noticed in seconds, not after the kernel's
    default of minutes (keepalive) to a quarter of an hour (retransmissions)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", USER_TIMEOUT_S),
        ("TCP_KEEPINTVL", 5),
        ("TCP_KEEPCNT", 2),
        ("TCP_USER_TIMEOUT", USER_TIMEOUT_S * 1000),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
