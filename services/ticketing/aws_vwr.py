"""The retired AWS Virtual Waiting Room's API over waitroom rooms (``WAITROOM_TICKETING_AWS_VWR_*``).

Sites and clients built against AWS's public and private REST APIs move by changing a base URL:
the same paths, methods, query and body parameters, JSON field names, status codes, error bodies
and token claims, mounted under a prefix (``/aws-vwr``) on the public listener (public calls) and on
the admin listener (private calls, with the admin bearer token instead of IAM SigV4). ``event_id``
names a waitroom room. How each call maps, and where behaviour differs: docs/aws-vwr-migration.md;
the mapping's pure rules: ``aws_vwr_state.py``.

AWS's answers are not waitroom's ``{"error", "detail"}``: they are what AWS's Lambdas return
(``{"error": "Invalid event ID"}``) and, for requests its API Gateway validators refuse, what API
Gateway returns (``{"message": "Invalid request body"}``), so the handlers parse their input
themselves instead of through FastAPI's validation.

AWS clients never heartbeat: they poll ``serving_num``, which names no request. The
:class:`Keeper` heartbeats the facade's tickets on their behalf (``aws_vwr_state.keep_alive``), so
they follow AWS's queue-position expiry and token validity instead of the room's heartbeat timeout.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from waitroom_core.room import MAX_ADMIT_COUNT, RoomState, Ticket, TicketState
from waitroom_events.commands import AdmitRequested, JoinRequested, LeaveRequested
from waitroom_events.heartbeats import Heartbeat
from waitroom_platform.runtime import Component
from waitroom_ticketing.api import ROOM_ID, ApiError, Services, _require_admin
from waitroom_ticketing.aws_vwr_settings import AwsVwrSettings
from waitroom_ticketing.aws_vwr_state import (
    Periods,
    TokenAnswer,
    active_tokens,
    expired_tokens,
    facade_ticket,
    is_facade_request,
    keep_alive,
    looks_like_request_id,
    may_claim,
    new_request_id,
    position_expires_in,
    serving_num,
    token_answer,
    token_window,
)
from waitroom_ticketing.aws_vwr_tokens import AwsVwrKey, Claims

log = structlog.get_logger()

#: AWS's public API answers every origin (its sample site is a single-page app on another host)
CORS = {"Access-Control-Allow-Origin": "*"}
CORS_HEADERS = "Content-Type,X-Amz-Date,Authorization,X-Api-Key,X-Amz-Security-Token"
_ROOM_ID = re.compile(ROOM_ID)

# The error bodies, word for word as AWS's Lambdas and API Gateway send them.
INVALID_EVENT = {"error": "Invalid event ID"}
INVALID_EVENT_OR_REQUEST = {"error": "Invalid event or request ID"}
INVALID_REQUEST = {"error": "Invalid request ID"}
REQUEST_NOT_FOUND = {"error": "Request ID not found"}
NOT_SERVED = {"error": "Request ID not being served yet"}
POSITION_EXPIRED = {"error": "Queue position has expired"}
SESSION_ENDED = {"error": "Token corresponding to request id has expired"}
SESSION_NOT_FOUND = {"error": "Request ID doesn't exist or status already set."}
INVALID_BODY = {"message": "Invalid request body"}
THROTTLED = {"message": "Too Many Requests"}
SESSION_STATUSES = {1: "completed", -1: "abandoned"}


def _answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={**CORS, **(headers or {})})


class AwsAnswer(Exception):
    """An AWS-shaped refusal, raised from a parsing helper and sent as it is."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body


def _missing(names: list[str]) -> AwsAnswer:
    return AwsAnswer(400, {"message": f"Missing required request parameters: [{', '.join(names)}]"})


def _query(request: Request, *names: str) -> list[str]:
    values = [request.query_params.get(name) for name in names]
    missing = [name for name, value in zip(names, values, strict=True) if not value]
    if missing:
        raise _missing(missing)
    return [value for value in values if value is not None]


async def _body(request: Request, required: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """The JSON object body, with each required field of its JSON type, as API Gateway's validator checks."""
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError, ClientDisconnect):
        raise AwsAnswer(400, INVALID_BODY) from None
    if not isinstance(body, dict):
        raise AwsAnswer(400, INVALID_BODY)
    for name, kind in required.items():
        value = body.get(name)
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            raise AwsAnswer(400, INVALID_BODY)
    return body


@dataclass
class _Tracked:
    """The facade's live tickets of one room, found by scanning only queue numbers not seen yet."""

    seen_upto: int = 0
    live: set[str] = field(default_factory=set)
    last_beat: float = 0.0


class Keeper(Component):
    """Heartbeats the facade's tickets while AWS's rules keep them (see ``aws_vwr_state.keep_alive``).

    Every replica with the facade keeps every facade ticket, so a replica's crash loses none; the
    cost is one heartbeat per kept ticket per room heartbeat interval per replica.
    """

    name = "aws-vwr-keeper"

    def __init__(
        self, services: Services, periods: Periods, *, tick_s: float = 1.0, max_claimed: int = 200_000
    ) -> None:
        self._svc = services
        self._periods = periods
        self._tick_s = tick_s
        self._rooms: dict[str, _Tracked] = {}
        #: (room, request) -> the claimed set's ``exp``: a claimed session is kept until then
        #: (kept after the ticket ends, so a session that ran out is still told from a lapsed position)
        self.claimed: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._max_claimed = max_claimed
        self.beats_sent = 0
        self.next_due = 0.0

    def claim(self, room_id: str, request_id: str, expires: float) -> None:
        key = (room_id, request_id)
        self.claimed[key] = max(self.claimed.pop(key, 0.0), expires)
        while len(self.claimed) > self._max_claimed:
            self.claimed.popitem(last=False)

    def may_claim(self, room: RoomState, ticket: Ticket) -> bool:
        assert room.config is not None
        claimed_here = (room.room_id, ticket.ticket_id) in self.claimed
        timeout = room.config.heartbeat_timeout_s
        return may_claim(ticket, self._periods, self._svc.clock(), claimed_here=claimed_here, timeout_s=timeout)

    def forget(self, room_id: str, request_id: str) -> None:
        self.claimed.pop((room_id, request_id), None)

    def live_in(self, room: RoomState) -> list[Ticket]:
        """The room's live facade tickets (and the tracking caught up with the read model)."""
        tracked = self._rooms.setdefault(room.room_id, _Tracked())
        for queue_no in range(tracked.seen_upto + 1, room.last_queue_no + 1):
            ticket = room.ticket_by_queue_no(queue_no)
            if ticket is not None and ticket.state.live and is_facade_request(ticket.ticket_id):
                tracked.live.add(ticket.ticket_id)
        tracked.seen_upto = room.last_queue_no
        live = []
        for ticket_id in list(tracked.live):
            ticket = room.tickets.get(ticket_id)
            if ticket is None or not ticket.state.live:
                tracked.live.discard(ticket_id)
            else:
                live.append(ticket)
        return live

    async def run(self) -> None:
        while True:
            now = self._svc.clock()
            if self._svc.is_ready():
                try:
                    await self.beat(now)
                except Exception as exc:  # a lost round is retried at once; the process must not end
                    log.warning("aws_vwr_keeper_round_failed", error=type(exc).__name__)
            # Wake when the next room is due, so each room's beats keep to its interval.
            await asyncio.sleep(min(max(self.next_due - self._svc.clock(), 0.05), self._tick_s))

    async def beat(self, now: float) -> int:
        """One round: heartbeat the kept tickets of every room whose heartbeat interval has passed."""
        deliveries = []
        topic = self._svc.topics.heartbeats.name
        self.next_due = now + self._tick_s
        for room in list(self._svc.read_model.rooms.values()):
            if room.config is None:
                continue
            tracked = self._rooms.setdefault(room.room_id, _Tracked())
            interval, timeout = room.config.heartbeat_interval_s, room.config.heartbeat_timeout_s
            if now - tracked.last_beat < interval:
                self.next_due = min(self.next_due, tracked.last_beat + interval)
                continue
            tracked.last_beat = now
            self.next_due = min(self.next_due, now + interval)
            for ticket in self.live_in(room):
                claimed = self.claimed.get((room.room_id, ticket.ticket_id))
                if keep_alive(ticket, self._periods, now, claimed_until=claimed, timeout_s=timeout):
                    beat = Heartbeat(room_id=room.room_id, ticket_id=ticket.ticket_id, at=now)
                    deliveries.append(await self._svc.publisher.send(topic, beat))
        if deliveries:
            await asyncio.wait_for(asyncio.gather(*deliveries), self._svc.publish_timeout_s)
            self.beats_sent += len(deliveries)
        return len(deliveries)


class Facade:
    """What the facade's handlers share: the services, the key, the periods, the keeper."""

    def __init__(
        self, services: Services, key: AwsVwrKey, periods: Periods, *, prefix: str, issuer: str | None
    ) -> None:
        self.svc = services
        self.key = key
        self.periods = periods
        self.prefix = prefix
        self.issuer = issuer
        self.keeper = Keeper(services, periods)

    def room(self, event_id: str) -> RoomState | None:
        """The room ``event_id`` names, or None (an unknown room is AWS's invalid event)."""
        self.svc.require_ready()
        if not _ROOM_ID.match(event_id):
            return None
        return self.svc.read_model.room(event_id)

    def issuer_for(self, request: Request) -> str:
        # AWS: https://<the API's domain>/<stage>; here the base URL the client called and the prefix.
        return self.issuer or str(request.base_url).rstrip("/") + self.prefix

    def tokens(
        self,
        room: RoomState,
        ticket: Ticket,
        issuer: str,
        *,
        validity_s: int | None = None,
        kid_in_header: bool = True,
    ) -> JSONResponse:
        periods = self.periods if validity_s is None else Periods(self.periods.queue_position_expiry_s, validity_s)
        window = token_window(ticket, periods)
        assert window is not None
        issued, expires = window
        claims = Claims(room.room_id, ticket.ticket_id, ticket.queue_no, issuer, issued, expires)
        tokens = self.key.token_set(claims, kid_in_header=kid_in_header)
        if ticket.state is TicketState.ADMITTED:
            self.keeper.claim(room.room_id, ticket.ticket_id, expires)
        body = {
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "id_token": tokens.id_token,
            "token_type": "Bearer",
            "expires_in": max(expires - int(self.svc.clock()), 0),
        }
        return _answer(body)

    async def generate_token(self, request: Request, *, private: bool) -> Response:
        body = await _body(request, {"event_id": str, "request_id": str})
        room = self.room(body["event_id"])
        request_id: str = body["request_id"]
        if room is None or not looks_like_request_id(request_id):
            return _answer(INVALID_EVENT_OR_REQUEST, 400)
        issuer, validity = self.issuer_for(request), None
        if private:  # the private call may override the issuer and the validity period
            if "issuer" in body:
                if not isinstance(body["issuer"], str) or not body["issuer"]:
                    return _answer(INVALID_BODY, 400)
                issuer = body["issuer"]
            if "validity_period" in body:
                value = body["validity_period"]
                if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 7 * 24 * 3600:
                    return _answer(INVALID_BODY, 400)
                validity = int(value)
        ticket = facade_ticket(room, request_id)
        if ticket is None:
            return _answer(INVALID_REQUEST, 400)
        assert room.config is not None
        claimed_here = (room.room_id, ticket.ticket_id) in self.keeper.claimed
        timeout = room.config.heartbeat_timeout_s
        match token_answer(ticket, self.periods, claimed_here=claimed_here, timeout_s=timeout):
            case TokenAnswer.NOT_SERVED:
                return _answer(NOT_SERVED, 202)
            case TokenAnswer.POSITION_EXPIRED:
                return _answer(POSITION_EXPIRED, 410)
            case TokenAnswer.SESSION_ENDED:
                return _answer(SESSION_ENDED, 410)
        if ticket.state is TicketState.ADMITTED and not self.keeper.may_claim(room, ticket):
            return _answer(POSITION_EXPIRED, 410)
        return self.tokens(room, ticket, issuer, validity_s=validity, kid_in_header=not private)


def _facade(request: Request) -> Facade:
    facade: Facade = request.app.state.aws_vwr
    return facade


def _preflight(methods: str) -> Any:
    """A CORS preflight answer, as AWS's mock OPTIONS integrations give it."""

    async def options() -> Response:
        headers = {**CORS, "Access-Control-Allow-Methods": methods, "Access-Control-Allow-Headers": CORS_HEADERS}
        return Response(status_code=200, headers=headers)

    return options


public = APIRouter(tags=["AWS Virtual Waiting Room (public)"])
private = APIRouter(tags=["AWS Virtual Waiting Room (private)"], dependencies=[Depends(_require_admin)])


@public.post("/assign_queue_num")
async def assign_queue_num(request: Request) -> Response:
    """Enter the queue: ``{event_id}`` -> ``{api_request_id}`` at once; the number comes later (``/queue_num``)."""
    facade = _facade(request)
    svc = facade.svc
    if svc.limiter.enabled:
        retry_after = svc.limiter.acquire(svc.client_key(request), time.monotonic())
        if retry_after > 0:
            return _answer(THROTTLED, 429, {"Retry-After": str(int(retry_after) + 1)})
    body = await _body(request, {"event_id": str})
    if facade.room(body["event_id"]) is None:
        return _answer(INVALID_EVENT, 400)
    request_id = new_request_id()
    await svc.submit_join(JoinRequested(room_id=body["event_id"], ticket_id=request_id, requested_at=svc.clock()))
    return _answer({"api_request_id": request_id})


@public.get("/queue_num")
async def queue_num(request: Request) -> Response:
    """The request's queue number: 202 until the join is sequenced."""
    facade = _facade(request)
    event_id, request_id = _query(request, "event_id", "request_id")
    room = facade.room(event_id)
    if room is None or not looks_like_request_id(request_id):
        return _answer(INVALID_EVENT_OR_REQUEST, 400)
    ticket = facade_ticket(room, request_id)
    if ticket is None:
        return _answer(REQUEST_NOT_FOUND, 202)
    return _answer(
        {"queue_number": ticket.queue_no, "entry_time": int(ticket.issued_at), "event_id": event_id, "status": 1}
    )


@public.get("/serving_num")
async def get_serving_num(request: Request) -> Response:
    """The serving counter: every queue number up to it may claim its tokens. A string, as AWS sends it."""
    facade = _facade(request)
    (event_id,) = _query(request, "event_id")
    room = facade.room(event_id)
    if room is None:
        return _answer(INVALID_EVENT, 400)
    return _answer({"serving_counter": str(serving_num(room))})


@public.get("/waiting_num")
async def waiting_num(request: Request) -> Response:
    """How many wait: queued, not yet served, not expired."""
    facade = _facade(request)
    (event_id,) = _query(request, "event_id")
    room = facade.room(event_id)
    if room is None:
        return _answer(INVALID_EVENT, 400)
    return _answer({"waiting_num": room.waiting})


@public.post("/generate_token")
async def generate_token(request: Request) -> Response:
    """The token set of a served request (the same set on every call); 202 while it waits, 410 once over."""
    return await _facade(request).generate_token(request, private=False)


@public.get("/queue_pos_expiry")
async def queue_pos_expiry(request: Request) -> Response:
    """Seconds left for a served position to claim its tokens."""
    facade = _facade(request)
    event_id, request_id = _query(request, "event_id", "request_id")
    room = facade.room(event_id)
    if room is None or not looks_like_request_id(request_id):
        return _answer(INVALID_EVENT_OR_REQUEST, 400)
    ticket = facade_ticket(room, request_id)
    if ticket is None:
        return _answer(INVALID_REQUEST, 404)
    if ticket.state is TicketState.WAITING:
        return _answer(NOT_SERVED, 202)
    if ticket.admitted_at is None:
        return _answer(POSITION_EXPIRED, 410)
    left = position_expires_in(ticket, facade.periods, facade.svc.clock())
    if left is None:
        return _answer(POSITION_EXPIRED, 410)
    return _answer({"expires_in": left})


@public.get("/public_key")
async def public_key(request: Request) -> Response:
    """The RSA public key (a JWK) that verifies the tokens."""
    facade = _facade(request)
    (event_id,) = _query(request, "event_id")
    if facade.room(event_id) is None:
        return _answer(INVALID_REQUEST, 400)  # sic: AWS's message for an unknown event here
    return _answer(facade.key.public_jwk())


for _path, _methods in (
    ("/assign_queue_num", "POST,OPTIONS"),
    ("/generate_token", "POST,OPTIONS"),
    ("/queue_num", "GET,OPTIONS"),
    ("/serving_num", "GET,OPTIONS"),
    ("/waiting_num", "GET,OPTIONS"),
    ("/queue_pos_expiry", "GET,OPTIONS"),
    ("/public_key", "GET,OPTIONS"),
):
    public.add_api_route(_path, _preflight(_methods), methods=["OPTIONS"], include_in_schema=False)


@private.post("/increment_serving_counter")
async def increment_serving_counter(request: Request) -> Response:
    """Serve the next ``increment_by`` in line: admit them, above the room's capacity if need be."""
    facade = _facade(request)
    svc = facade.svc
    body = await _body(request, {"event_id": str, "increment_by": (int, float)})
    room = facade.room(body["event_id"])
    if room is None:
        return _answer(INVALID_EVENT, 400)
    increment = body["increment_by"]
    if increment != int(increment):
        return _answer(INVALID_BODY, 400)
    count = int(increment)
    if count < 0:
        return _answer({"error": "increment_by must not be negative: waitroom cannot take an admission back"}, 400)
    if count > MAX_ADMIT_COUNT:
        return _answer({"error": f"increment_by must be at most {MAX_ADMIT_COUNT}"}, 400)
    if count > 0:
        target = serving_num(room) + min(count, room.waiting)
        await svc.publish(
            svc.topics.commands.name,
            AdmitRequested(room_id=room.room_id, requested_at=svc.clock(), count=count, above_capacity=True),
        )
        if not await svc.read_model.wait_until(lambda: serving_num(room) >= target, svc.join_wait_s):
            log.warning("aws_vwr_admit_not_applied_in_time", room_id=room.room_id, count=count)
    return _answer({"serving_num": serving_num(room)})


@private.get("/num_active_tokens")
async def num_active_tokens(request: Request) -> Response:
    """Sessions served and not ended whose tokens are still valid."""
    facade = _facade(request)
    (event_id,) = _query(request, "event_id")
    room = facade.room(event_id)
    if room is None:
        return _answer(INVALID_EVENT, 400)
    return _answer({"active_tokens": active_tokens(room, facade.periods, facade.svc.clock())})


@private.get("/expired_tokens")
async def list_expired_tokens(request: Request) -> Response:
    """Request ids whose tokens' ``exp`` has passed."""
    facade = _facade(request)
    (event_id,) = _query(request, "event_id")
    room = facade.room(event_id)
    if room is None:
        return _answer(INVALID_EVENT, 400)
    return _answer(expired_tokens(room, facade.periods, facade.svc.clock()))


@private.post("/update_session")
async def update_session(request: Request) -> Response:
    """End a served session: ``status`` 1 (completed) or -1 (abandoned); its slot goes to the next in line."""
    facade = _facade(request)
    svc = facade.svc
    body = await _body(request, {"event_id": str, "request_id": str, "status": (int, float, str)})
    room = facade.room(body["event_id"])
    request_id: str = body["request_id"]
    if room is None or not looks_like_request_id(request_id):
        return _answer(INVALID_EVENT_OR_REQUEST, 400)
    try:
        status = int(body["status"])
    except ValueError:
        return _answer(INVALID_BODY, 400)
    if status not in SESSION_STATUSES:
        return _answer({"error": "status must be 1 (completed) or -1 (abandoned)"}, 400)
    ticket = facade_ticket(room, request_id)
    if ticket is None or ticket.state is not TicketState.ADMITTED:
        return _answer(SESSION_NOT_FOUND, 404)
    await svc.publish(
        svc.topics.commands.name, LeaveRequested(room_id=room.room_id, ticket_id=request_id, requested_at=svc.clock())
    )
    facade.keeper.forget(room.room_id, request_id)
    if not await svc.read_model.wait_until(lambda: not ticket.state.live, svc.join_wait_s):
        log.warning("aws_vwr_session_end_not_applied_in_time", room_id=room.room_id)
    log.info("aws_vwr_session_updated", room_id=room.room_id, status=SESSION_STATUSES[status])
    return _answer({"ResponseMetadata": {"RequestId": uuid.uuid4().hex, "HTTPStatusCode": 200, "RetryAttempts": 0}})


@private.post("/reset_initial_state")
async def reset_initial_state(request: Request) -> Response:
    """End every live request of the event. Queue numbers go on: waitroom never reuses one."""
    facade = _facade(request)
    svc = facade.svc
    body = await _body(request, {"event_id": str})
    room = facade.room(body["event_id"])
    if room is None:
        return _answer(INVALID_EVENT, 400)
    now = svc.clock()
    live = facade.keeper.live_in(room)
    deliveries = [
        await svc.publisher.send(
            svc.topics.commands.name, LeaveRequested(room_id=room.room_id, ticket_id=t.ticket_id, requested_at=now)
        )
        for t in live
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*deliveries), svc.publish_timeout_s)
    except Exception as exc:
        raise ApiError(503, "log_unavailable", "the event log is unreachable; retry", {"Retry-After": "2"}) from exc
    for ticket in live:
        facade.keeper.forget(room.room_id, ticket.ticket_id)
    await svc.read_model.wait_until(lambda: not any(t.state.live for t in live), svc.join_wait_s)
    log.info("aws_vwr_reset", room_id=room.room_id, ended=len(live))
    return _answer({"message": f"Reset completed: {len(live)} requests ended; queue numbers continue"})


@private.post("/generate_token")
async def private_generate_token(request: Request) -> Response:
    """``generate_token`` with optional ``issuer`` and ``validity_period`` overrides; no ``kid`` in the header."""
    return await _facade(request).generate_token(request, private=True)


def _install_aws_answers(app: FastAPI) -> None:
    @app.exception_handler(AwsAnswer)
    async def _aws_answer(_: Request, exc: AwsAnswer) -> JSONResponse:
        return _answer(exc.body, exc.status)


def build_facade(settings: AwsVwrSettings, services: Services) -> Facade:
    if settings.aws_vwr_key_file is not None:
        key = AwsVwrKey.from_file(settings.aws_vwr_key_file)
    else:
        log.warning("aws_vwr_ephemeral_key", reason="WAITROOM_TICKETING_AWS_VWR_KEY_FILE not set (development)")
        key = AwsVwrKey.ephemeral()
    periods = Periods(settings.aws_vwr_queue_position_expiry_period, settings.aws_vwr_validity_period)
    return Facade(services, key, periods, prefix=settings.aws_vwr_prefix, issuer=settings.aws_vwr_issuer)


def mount_aws_vwr(
    settings: AwsVwrSettings, services: Services, public_app: FastAPI, admin_app: FastAPI
) -> list[Component]:
    """Mount the facade if enabled: public calls on ``public_app``, private ones on ``admin_app``;
    returns the components it needs run (the keeper)."""
    if not settings.aws_vwr_enabled:
        return []
    facade = build_facade(settings, services)
    for app, router in ((public_app, public), (admin_app, private)):
        app.state.aws_vwr = facade
        app.include_router(router, prefix=settings.aws_vwr_prefix)
        _install_aws_answers(app)
    log.info("aws_vwr_mounted", prefix=settings.aws_vwr_prefix, kid=facade.key.kid)
    return [facade.keeper]
