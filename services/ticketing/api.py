"""The public and admin HTTP API. Handlers only translate: request -> command -> publish -> view.

Two applications over the same :class:`Services`, each on its own listener: the public one
(visitors, the waiting page, the JWKS, the public OpenAPI document) and the admin one
(``/v1/admin/...`` and the API docs, see ``docs.py``). Neither serves the other's routes: an admin
path on the public port is an ordinary 404. Domain and transport errors map to
``{"error": code, "detail": ...}`` in one place (``ApiError`` and :func:`_install_error_handlers`).
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import orjson
import structlog
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Body, Depends, FastAPI, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.responses import JSONResponse as StandardJSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from waitroom_core.room import InvalidCommand, RoomConfig, RoomState, Ticket, TicketState, configured
from waitroom_events.base import Message
from waitroom_events.commands import (
    AdmitRequested,
    JoinRequested,
    LeaveRequested,
    RoomArchiveRequested,
    RoomConfigureRequested,
)
from waitroom_events.events import RoomEvent, TicketExpired, TicketLeft
from waitroom_events.topics import TopicRegistry
from waitroom_platform.kafka import Publisher, outgoing_headers
from waitroom_platform.telemetry import tracing
from waitroom_ticketing.docs import mount_docs
from waitroom_ticketing.edge import TrustedProxies, rate_limit_key
from waitroom_ticketing.heartbeats import HeartbeatCoalescer
from waitroom_ticketing.limits import AdminAuthFirst, BodyLimit
from waitroom_ticketing.page import render_page
from waitroom_ticketing.ratelimit import RateLimiter
from waitroom_ticketing.read_model import JoinRefused, ReadModel
from waitroom_ticketing.sequencer import LocalDecider
from waitroom_ticketing.stats_view import StatsView
from waitroom_ticketing.tokens import EntryTokenSigner, TicketTokens, new_ticket_id

log = structlog.get_logger()

ROOM_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
TICKET_ID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
#: a retry key is a bearer of the place in the queue: long enough not to be guessed (a UUID is)
IDEMPOTENCY_KEY = r"^[A-Za-z0-9._:-]{16,128}$"
#: and not a run of one character or two ("aaaaaaaaaaaaaaaa")
IDEMPOTENCY_KEY_MIN_DISTINCT = 8

RoomId = Annotated[str, Path(pattern=ROOM_ID, description="room id: letters, digits, . _ -; at most 64")]
TicketId = Annotated[str, Path(pattern=TICKET_ID, description="ticket id (UUID)")]


class JSONResponse(StandardJSONResponse):
    """JSON bodies rendered by orjson: the standard encoder was 6 % of a status call's time."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


#: the code and detail of a 500 (the error itself is logged, never sent)
UNEXPECTED = ("internal_error", "unexpected error; it has been logged")


def error_body(code: str, detail: Any) -> dict[str, Any]:
    """The body of every error answer (the fast path of ``fastpath.py`` renders it too)."""
    return {"error": code, "detail": detail}


def _error(status: int, code: str, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, detail), status_code=status, headers=headers)


class BrandingBody(BaseModel):
    """The waiting page's look (validated again by the core: waitroom_core.room.validate_branding)."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=80)
    message: str | None = Field(default=None, max_length=500)
    logo_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://\S+$")
    accent_color: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")
    background_color: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")
    text_color: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")


class RoomConfigBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    capacity: StrictInt | None = Field(default=None, ge=0)
    heartbeat_timeout_s: float | None = Field(default=None, gt=0)
    heartbeat_interval_s: float | None = Field(default=None, gt=0)
    target_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://\S+$")
    paused: StrictBool | None = None
    #: replaces the whole branding of the waiting page; ``{}`` removes it
    branding: BrandingBody | None = None


class AdmitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: StrictInt = Field(default=1, ge=1, le=100_000)
    above_capacity: StrictBool = False


# ---------------------------------------------------------------- the contract (OpenAPI)


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer: a stable code, a sentence, and for invalid requests the fields at fault."""

    error: str = Field(description="a stable code, e.g. room_not_found, unauthorized, invalid_request")
    detail: str
    fields: list[FieldError] | None = None


class TicketView(BaseModel):
    ticket_id: str
    room_id: str
    queue_no: int
    state: str = Field(description="waiting or admitted")
    position: int
    estimated_wait_s: float | None
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    entry_token: str | None = Field(description="a signed JWT once admitted (JWKS at /.well-known/jwks.json)")
    ticket_token: str | None = Field(description="the bearer of this ticket's calls; only in the join's answer")


class PendingView(BaseModel):
    ticket_id: str
    room_id: str
    state: str = Field(description="pending: the join is not sequenced yet; ask again")
    ticket_token: str | None = None


class RoomView(BaseModel):
    room_id: str
    capacity: int
    active: int
    waiting: int
    last_queue_no: int
    estimated_wait_s: float | None
    paused: bool


class AdminRoomView(RoomView):
    heartbeat_timeout_s: float
    heartbeat_interval_s: float
    target_url: str | None
    tickets_total: int


class RoomList(BaseModel):
    rooms: list[AdminRoomView]


class RoomPending(BaseModel):
    room_id: str
    state: str


class AdmitAccepted(BaseModel):
    room_id: str
    count: int
    above_capacity: bool
    state: str


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    texts = {
        400: "the request is not HTTP or JSON it can read",
        401: "no or a malformed bearer token",
        403: "the admin token is not valid",
        404: "no such room, ticket or path",
        405: "the method is not allowed on this path",
        409: "the room still has live tickets",
        410: "the ticket has ended (expired or left): join again",
        413: "the body is too large",
        422: "the request is not valid (fields name what)",
        429: "too many requests from this client (Retry-After)",
        503: "starting, overloaded or the event log is unreachable (Retry-After)",
    }
    return {status: {"model": ErrorBody, "description": texts[status]} for status in statuses}


#: what every route may answer whatever it does: the framework's and the server limits' errors
_ALWAYS = (400, 404, 405, 413, 422, 503)


def _responses(*statuses: int, **views: Any) -> dict[int | str, dict[str, Any]]:
    out = _errors(*sorted(set(statuses) | set(_ALWAYS)))
    for status, spec in views.items():
        out[int(status.removeprefix("s"))] = spec
    return out


_ticket_bearer = HTTPBearer(
    auto_error=False, scheme_name="ticket token", description="the ticket_token the join answered with"
)

#: The ticket calls (status, heartbeat, leave: the hot ones) declare the ticket token in OpenAPI
#: without a dependency. FastAPI solves each dependency on every request; the two of a status call
#: (the services, the bearer header) were two thirds of its dependency solving (see benchmarks.md).
#: ``create_public_app`` adds the scheme itself to the document's components.
_TICKET_SECURITY: dict[str, Any] = {"security": [{_ticket_bearer.scheme_name: []}]}


def _ticket_call(request: Request) -> tuple[Services, str | None]:
    """The services and the raw ``Authorization`` header of a ticket call (latin-1, as Starlette
    decodes headers; ``_bearer`` takes it apart and never raises)."""
    services: Services = request.scope["app"].state.services
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            return services, value.decode("latin-1")
    return services, None


#: The join's optional ``Idempotency-Key`` header, declared as FastAPI would declare a ``Header``
#: parameter (the same OpenAPI document); the handler reads and checks it itself (_join_call).
_IDEMPOTENCY_KEY_PARAMETER: dict[str, Any] = {
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {
                "anyOf": [{"type": "string", "pattern": IDEMPOTENCY_KEY}, {"type": "null"}],
                "title": "Idempotency-Key",
            },
        }
    ]
}
IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY)


def _join_call(request: Request) -> tuple[Services, str | None]:
    """The services and the ``Idempotency-Key`` of a join (the first, as FastAPI's ``Header`` took it).

    Read here rather than through FastAPI's dependencies and header parameter: solving them was
    about a fifth of a join's CPU in the API (py-spy, the join row of bench/http_joins.py). A key
    that breaks the pattern is refused exactly as the validation of a ``Header`` refused it.
    """
    services: Services = request.scope["app"].state.services
    for name, value in request.scope["headers"]:
        if name == b"idempotency-key":
            key = value.decode("latin-1")
            if IDEMPOTENCY_KEY_RE.fullmatch(key) is None:
                raise RequestValidationError(
                    [
                        {
                            "type": "string_pattern_mismatch",
                            "loc": ("header", "Idempotency-Key"),
                            "msg": f"String should match pattern '{IDEMPOTENCY_KEY}'",
                            "input": key,
                            "ctx": {"pattern": IDEMPOTENCY_KEY},
                        }
                    ]
                )
            return services, key
    return services, None


def _declare_ticket_scheme(app: FastAPI) -> None:
    """Put the ticket token's bearer scheme into ``app``'s OpenAPI components (see _TICKET_SECURITY)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        document = build()
        if fresh:
            schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
            scheme = _ticket_bearer.model.model_dump(mode="json", by_alias=True, exclude_none=True)
            schemes[_ticket_bearer.scheme_name] = scheme
        return document

    app.openapi = openapi  # type: ignore[method-assign]


class Services:
    """What the handlers need, built by the composition root."""

    def __init__(
        self,
        *,
        topics: TopicRegistry,
        publisher: Publisher,
        read_model: ReadModel,
        tickets: TicketTokens,
        signer: EntryTokenSigner,
        admin_token: str,
        limiter: RateLimiter,
        join_wait_s: float,
        publish_timeout_s: float,
        clock: Callable[[], float] = time.time,
        is_ready: Callable[[], bool] | None = None,
        stats: StatsView | None = None,
        proxies: TrustedProxies | None = None,
        heartbeats: HeartbeatCoalescer | None = None,
        decide_locally: LocalDecider | None = None,
    ) -> None:
        self.topics = topics
        self.publisher = publisher
        self.read_model = read_model
        self.tickets = tickets
        self.signer = signer
        self.admin_token = admin_token
        self.limiter = limiter
        self.join_wait_s = join_wait_s
        self.publish_timeout_s = publish_timeout_s
        self.clock = clock
        self.is_ready = is_ready or read_model.ready
        self.stats = stats
        self.proxies = proxies or TrustedProxies()
        #: this process's own sequencer, for joins of the rooms it owns (docs/adr/0011); None: none runs here
        self.decide_locally = decide_locally
        self.heartbeats = heartbeats or HeartbeatCoalescer(
            lambda message: publisher.publish(topics.heartbeats.name, message),
            window_s=0.0,
            publish_timeout_s=publish_timeout_s,
        )
        #: ticket id -> when this process accepted its leave, until its read model shows it ended
        self.leaving: dict[str, float] = {}
        read_model.add_listener(self._forget_ended)

    def _forget_ended(self, events: Sequence[RoomEvent]) -> None:
        """A ticket that ended (left or expired, through any replica) leaves the per-ticket caches:
        its entry token, its heartbeat stamp and a pending leave. Without this a long sale keeps
        them for every expired visitor (the signer's cache up to its bound, the stamps for an hour)."""
        for event in events:
            if type(event) is TicketExpired or type(event) is TicketLeft:
                self.signer.forget(event.room_id, event.ticket_id)
                self.heartbeats.forget(event.ticket_id)
                self.leaving.pop(event.ticket_id, None)

    def left(self, ticket_id: str) -> None:
        """Remember a leave this process accepted (read-your-writes, see ``_authorized_ticket``)."""
        leaving = self.leaving
        leaving[ticket_id] = time.monotonic()
        if len(leaving) > LEAVING_MAX:  # oldest first: a dict keeps insertion order
            for old in list(leaving)[: len(leaving) - LEAVING_MAX]:
                del leaving[old]

    def leave_pending(self, ticket_id: str) -> bool:
        """Whether this process accepted a leave of the ticket that its read model has not shown yet."""
        at = self.leaving.get(ticket_id)
        if at is None:
            return False
        if time.monotonic() - at > LEAVING_FOR_S:
            del self.leaving[ticket_id]
            return False
        return True

    def client_key(self, request: Request) -> str:
        """The rate-limit bucket of the request's client (see ``edge.py``: trusted proxies, IPv6 /64)."""
        peer = request.client.host if request.client else None
        return self.client_key_of(peer, request.headers.getlist("x-forwarded-for"))

    def client_key_of(self, peer: str | None, forwarded_for: Sequence[str]) -> str:
        return rate_limit_key(self.proxies.client(peer, forwarded_for))

    async def heartbeat(self, room: RoomState | None, room_id: str, ticket_id: str) -> None:
        """Queue the ticket's heartbeat in its room's batch; wait for the log unless the rule of
        ``heartbeats.py`` says losing it cannot expire the visitor."""
        now = self.clock()
        config = room.config if room is not None else None
        if config is not None and self.heartbeats.heard_recently(
            ticket_id, now, interval_s=config.heartbeat_interval_s
        ):
            return
        written = self.heartbeats.add(room_id, ticket_id)
        if config is not None and self.heartbeats.may_answer_at_once(
            ticket_id, now, interval_s=config.heartbeat_interval_s, timeout_s=config.heartbeat_timeout_s
        ):
            return
        try:
            await written
        except (KafkaError, TimeoutError) as exc:
            raise ApiError(503, "log_unavailable", "the event log is unreachable; retry", {"Retry-After": "2"}) from exc

    async def publish(self, topic: str, message: Message) -> None:
        try:
            async with asyncio.timeout(self.publish_timeout_s):  # no task of its own, unlike wait_for
                await self.publisher.publish(topic, message)
        except (KafkaError, TimeoutError) as exc:
            log.warning("publish_failed", topic=topic, error=type(exc).__name__)
            raise ApiError(503, "log_unavailable", "the event log is unreachable; retry", {"Retry-After": "2"}) from exc

    async def submit_join(self, command: JoinRequested) -> None:
        """Put a join into the log; returns once it is there. This process's own sequencer decides
        it when that sequencer owns the room (docs/adr/0011): its events are then committed and in
        the read model, and no command record was written. Otherwise, or when that did not work
        (the partition moved, the transaction failed or took longer than ``publish_timeout_s``),
        it goes to ``waitroom.commands`` as a command: a join whose ticket the room knows already
        decides nothing, so a join decided both ways still has one ticket."""
        if self.decide_locally is not None:
            answer = self.decide_locally(command, outgoing_headers() if tracing() else ())
            if answer is not None:
                done, _ = await asyncio.wait({answer}, timeout=self.publish_timeout_s)
                if done and answer.result() is None:
                    return
        await self.publish(self.topics.commands.name, command)

    def require_ready(self) -> None:
        if not self.is_ready():
            raise ApiError(503, "starting", "the service is still reading the log; retry", {"Retry-After": "1"})

    # ---------------------------------------------------------------- views

    def ticket_view(self, room: RoomState, ticket: Ticket, *, ticket_token: str | None = None) -> dict[str, Any]:
        config = room.config or RoomConfig(capacity=0)
        entry_token = None
        if ticket.state is TicketState.ADMITTED:
            entry_token = self.signer.sign(room.room_id, ticket.ticket_id, ticket.queue_no, self.clock())
        return {
            "ticket_id": ticket.ticket_id,
            "room_id": room.room_id,
            "queue_no": ticket.queue_no,
            "state": ticket.state.value,
            "position": room.position(ticket),
            "estimated_wait_s": self.estimated_wait(room, ticket),
            "heartbeat_interval_s": config.heartbeat_interval_s,
            "heartbeat_timeout_s": config.heartbeat_timeout_s,
            "entry_token": entry_token,
            "ticket_token": ticket_token,
        }

    @staticmethod
    def pending_view(room_id: str, ticket_id: str, ticket_token: str | None = None) -> dict[str, Any]:
        return {"ticket_id": ticket_id, "room_id": room_id, "state": "pending", "ticket_token": ticket_token}

    def estimated_wait(self, room: RoomState, ticket: Ticket | None = None) -> float | None:
        """Wait of ``ticket`` (or of the last in line) at the recent admission pace; None without a pace yet."""
        if ticket is not None and ticket.state is not TicketState.WAITING:
            return 0.0 if ticket.state is TicketState.ADMITTED else None
        position = room.position(ticket) if ticket is not None else room.waiting - 1
        if position < 0:
            return 0.0
        per_admission = self.stats.seconds_per_admission(room.room_id) if self.stats is not None else None
        return None if per_admission is None else round((position + 1) * per_admission, 1)

    def room_view(self, room: RoomState) -> dict[str, Any]:
        assert room.config is not None
        return {
            "room_id": room.room_id,
            "capacity": room.config.capacity,
            "active": room.active,
            "waiting": room.waiting,
            "last_queue_no": room.last_queue_no,
            "estimated_wait_s": self.estimated_wait(room),
            "paused": room.config.paused,
        }

    def admin_room_view(self, room: RoomState) -> dict[str, Any]:
        assert room.config is not None
        return {
            **self.room_view(room),
            "heartbeat_timeout_s": room.config.heartbeat_timeout_s,
            "heartbeat_interval_s": room.config.heartbeat_interval_s,
            "target_url": room.config.target_url,
            "tickets_total": len(room.tickets),
            "branding": dict(room.config.branding) or None,
        }


def _tag(room_id: str, ticket_id: str | None = None) -> None:
    """Name the room and ticket on the request's span, so a trace can be found by either."""
    if not tracing():
        return
    span = trace.get_current_span()
    span.set_attribute("waitroom.room_id", room_id)
    if ticket_id is not None:
        span.set_attribute("waitroom.ticket_id", ticket_id)


# Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread, a
# thread hop per request that the profile of the status call showed as its largest single cost.
async def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


Svc = Annotated[Services, Depends(_services)]


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


#: accepted leaves remembered at most this long / this many (the read model shows them long before)
LEAVING_FOR_S = 600.0
LEAVING_MAX = 100_000


def _authorized_ticket(
    svc: Services, room_id: str, ticket_id: str, authorization: str | None
) -> tuple[RoomState, Ticket] | None:
    """The ticket if the caller holds its token; ``None`` while its join is still being sequenced."""
    _tag(room_id, ticket_id)
    token = _bearer(authorization)
    if token is None:
        raise ApiError(401, "unauthorized", "this call needs the ticket's token: Authorization: Bearer <ticket_token>")
    if not svc.tickets.verify(room_id, ticket_id, token):
        raise ApiError(404, "ticket_not_found", "no such ticket for this token")
    svc.require_ready()
    found = svc.read_model.ticket(room_id, ticket_id)
    if svc.leaving and svc.leave_pending(ticket_id):
        # Read-your-writes for a leave: once this process answered 204, it answers as if the ticket
        # had left, even while its read model has not applied the leave yet (a slow sequencer).
        if found is None or found[1].state.live:
            room = found[0] if found is not None else svc.read_model.room(room_id)
            queue_no = found[1].queue_no if found is not None else 0
            if room is not None:
                return room, Ticket(ticket_id, queue_no, TicketState.LEFT, 0.0)
        else:
            del svc.leaving[ticket_id]  # applied: the read model answers from here on
    return found


def _ended(ticket: Ticket) -> ApiError:
    code = "ticket_expired" if ticket.state is TicketState.EXPIRED else "ticket_left"
    return ApiError(410, code, f"the ticket is {ticket.state.value}; join again to get a new one")


#: the admin token as an OpenAPI security scheme: the admin docs' "Authorize" button sends it
_admin_bearer = HTTPBearer(auto_error=False, scheme_name="admin token", description="WAITROOM_TICKETING_ADMIN_TOKEN")


async def _require_admin(
    svc: Svc, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)] = None
) -> None:
    token = credentials.credentials.strip() if credentials is not None else None
    if not token:
        raise ApiError(401, "unauthorized", "admin calls need Authorization: Bearer <admin token>")
    if not hmac.compare_digest(token.encode(), svc.admin_token.encode()):
        raise ApiError(403, "forbidden", "the admin token is not valid")


public = APIRouter(tags=["visitors"])
admin = APIRouter(prefix="/v1/admin", tags=["operators"], dependencies=[Depends(_require_admin)])


@public.post(
    "/v1/rooms/{room_id}/tickets",
    status_code=201,
    response_model=TicketView,
    responses=_responses(
        404,
        410,
        429,
        s200={"model": TicketView, "description": "a retried join (same Idempotency-Key): the same ticket"},
        s202={"model": PendingView, "description": "joined, not sequenced yet: poll the ticket"},
    ),
    openapi_extra=_IDEMPOTENCY_KEY_PARAMETER,
)
async def join(room_id: RoomId, request: Request) -> Response:
    svc, idempotency_key = _join_call(request)
    status, body, headers = await join_answer(svc, room_id, idempotency_key, lambda: svc.client_key(request))
    return JSONResponse(body, status_code=status, headers=headers)


#: an answer of a visitor call: status, JSON body, extra headers (``None``: none)
Answer = tuple[int, dict[str, Any], dict[str, str] | None]


async def join_answer(
    svc: Services, room_id: str, idempotency_key: str | None, client_key: Callable[[], str]
) -> Answer:
    """A join of ``room_id`` (already a valid room id; the key, if any, already matches its
    pattern): the answer's status, body and extra headers, or an ``ApiError``. Shared by the
    route above and the fast path of ``fastpath.py``, so both answer alike."""
    retry_after = svc.limiter.acquire(client_key(), time.monotonic()) if svc.limiter.enabled else 0.0
    if retry_after > 0:
        raise ApiError(
            429, "rate_limited", "too many joins from this client", {"Retry-After": str(int(retry_after) + 1)}
        )
    svc.require_ready()
    room = svc.read_model.room(room_id)
    if room is None:
        raise ApiError(404, "room_not_found", f"no room {room_id!r}")
    if idempotency_key is not None and len(set(idempotency_key)) < IDEMPOTENCY_KEY_MIN_DISTINCT:
        raise ApiError(
            422, "invalid_idempotency_key", "an Idempotency-Key needs at least 16 characters of random text (a UUID)"
        )
    ticket_id = svc.tickets.ticket_id_for_key(room_id, idempotency_key) if idempotency_key else new_ticket_id()
    _tag(room_id, ticket_id)
    ticket_token = svc.tickets.token_for(room_id, ticket_id)
    existing = room.find(ticket_id)  # kept or forgotten (a tombstone: ended)
    if existing is not None:
        if not existing.state.live:
            raise _ended(existing)  # the key is spent with its ticket: a replay returns no token
        return 200, svc.ticket_view(room, existing, ticket_token=ticket_token), None
    await svc.submit_join(
        JoinRequested(room_id=room_id, ticket_id=ticket_id, requested_at=svc.clock(), idempotency_key=idempotency_key)
    )
    try:
        ticket = await svc.read_model.wait_for_ticket(room_id, ticket_id, svc.join_wait_s)
    except JoinRefused as exc:
        raise ApiError(404, "room_not_found", f"no room {room_id!r} ({exc.reason})") from exc
    location = {"Location": f"/v1/rooms/{room_id}/tickets/{ticket_id}"}
    if ticket is None:
        return 202, svc.pending_view(room_id, ticket_id, ticket_token), location
    return 201, svc.ticket_view(room, ticket, ticket_token=ticket_token), location


@public.get(
    "/v1/rooms/{room_id}/tickets/{ticket_id}",
    response_model=TicketView,
    responses=_responses(401, 410, s202={"model": PendingView, "description": "not sequenced yet"}),
    openapi_extra=_TICKET_SECURITY,
)
async def ticket_status(room_id: RoomId, ticket_id: TicketId, request: Request) -> Response:
    svc, authorization = _ticket_call(request)
    status, body, headers = status_answer(svc, room_id, ticket_id, authorization)
    return JSONResponse(body, status_code=status, headers=headers)


def status_answer(svc: Services, room_id: str, ticket_id: str, authorization: str | None) -> Answer:
    """A ticket's status (ids already valid; ``authorization`` the raw header), or an ``ApiError``;
    shared with ``fastpath.py`` like :func:`join_answer`."""
    found = _authorized_ticket(svc, room_id, ticket_id, authorization)
    if found is None:
        return 202, svc.pending_view(room_id, ticket_id), {"Retry-After": "1"}
    room, ticket = found
    if not ticket.state.live:
        raise _ended(ticket)
    return 200, svc.ticket_view(room, ticket), None


@public.post(
    "/v1/rooms/{room_id}/tickets/{ticket_id}/heartbeat",
    response_model=TicketView,
    responses=_responses(401, 410, s202={"model": PendingView, "description": "not sequenced yet"}),
    openapi_extra=_TICKET_SECURITY,
)
async def heartbeat(room_id: RoomId, ticket_id: TicketId, request: Request) -> Response:
    svc, authorization = _ticket_call(request)
    status, body, headers = await heartbeat_answer(svc, room_id, ticket_id, authorization)
    return JSONResponse(body, status_code=status, headers=headers)


async def heartbeat_answer(svc: Services, room_id: str, ticket_id: str, authorization: str | None) -> Answer:
    """A ticket's heartbeat, as :func:`status_answer`."""
    found = _authorized_ticket(svc, room_id, ticket_id, authorization)
    if found is not None and not found[1].state.live:
        raise _ended(found[1])
    await svc.heartbeat(found[0] if found is not None else svc.read_model.room(room_id), room_id, ticket_id)
    if found is None:
        return 202, svc.pending_view(room_id, ticket_id), {"Retry-After": "1"}
    room, ticket = found
    return 200, svc.ticket_view(room, ticket), None


@public.delete(
    "/v1/rooms/{room_id}/tickets/{ticket_id}",
    status_code=204,
    responses=_responses(401),
    openapi_extra=_TICKET_SECURITY,
)
async def leave(room_id: RoomId, ticket_id: TicketId, request: Request) -> Response:
    svc, authorization = _ticket_call(request)
    found = _authorized_ticket(svc, room_id, ticket_id, authorization)
    if found is None or found[1].state.live:
        await svc.publish(
            svc.topics.commands.name, LeaveRequested(room_id=room_id, ticket_id=ticket_id, requested_at=svc.clock())
        )

        def gone() -> bool:
            now = svc.read_model.ticket(room_id, ticket_id)
            return now is not None and not now[1].state.live

        # Read-your-writes: once 204 is sent, this replica no longer shows the ticket as live;
        # should its read model not have applied the leave by then, ``svc.leaving`` answers for it.
        svc.left(ticket_id)
        if await svc.read_model.wait_until(gone, svc.join_wait_s):
            svc.leaving.pop(ticket_id, None)
        else:
            log.warning("leave_not_applied_in_time", room_id=room_id, ticket_id=ticket_id)
    svc.signer.forget(room_id, ticket_id)
    svc.heartbeats.forget(ticket_id)
    return Response(status_code=204)


@public.get("/v1/rooms/{room_id}", response_model=RoomView, responses=_responses())
async def room_status(room_id: RoomId, svc: Svc) -> dict[str, Any]:
    svc.require_ready()
    room = svc.read_model.room(room_id)
    if room is None:
        raise ApiError(404, "room_not_found", f"no room {room_id!r}")
    return svc.room_view(room)


@public.get("/wait/{room_id}", include_in_schema=False)
async def waiting_page(
    room_id: RoomId, svc: Svc, accept_language: Annotated[str | None, Header(max_length=512)] = None
) -> Response:
    """The visitor's page over the calls above (services/ticketing/page.py)."""
    svc.require_ready()
    room = svc.read_model.room(room_id)
    if room is None or room.config is None:
        raise ApiError(404, "room_not_found", f"no room {room_id!r}")
    body, headers = render_page(
        room_id, room.config.target_url, accept_language=accept_language, branding=dict(room.config.branding)
    )
    return HTMLResponse(body, headers=headers)


@public.get("/.well-known/jwks.json", responses=_responses())
async def jwks(svc: Svc) -> Response:
    return JSONResponse(svc.signer.jwks(), headers={"Cache-Control": "public, max-age=300"})


@admin.put(
    "/rooms/{room_id}",
    response_model=AdminRoomView,
    responses=_responses(
        401,
        403,
        s201={"model": AdminRoomView, "description": "the room was created"},
        s202={"model": RoomPending, "description": "accepted, not applied yet"},
    ),
)
async def configure_room(room_id: RoomId, svc: Svc, body: Annotated[RoomConfigBody, Body()]) -> Response:
    svc.require_ready()
    room = svc.read_model.room(room_id)
    current = room.config if room is not None else None
    command = RoomConfigureRequested(room_id=room_id, requested_at=svc.clock(), **body.model_dump(exclude_none=True))
    try:
        wanted = configured(current, command)
    except InvalidCommand as exc:
        raise ApiError(422, "invalid_config", str(exc)) from exc
    await svc.publish(svc.topics.commands.name, command)

    def landed() -> bool:
        landed_room = svc.read_model.room(room_id)
        return landed_room is not None and landed_room.config == wanted

    if not await svc.read_model.wait_until(landed, svc.join_wait_s):
        return JSONResponse({"room_id": room_id, "state": "pending"}, status_code=202)
    applied = svc.read_model.room(room_id)
    assert applied is not None
    return JSONResponse(svc.admin_room_view(applied), status_code=200 if current is not None else 201)


@admin.get("/rooms", response_model=RoomList, responses=_responses(401, 403))
async def list_rooms(svc: Svc) -> dict[str, Any]:
    svc.require_ready()
    rooms = sorted((r for r in svc.read_model.rooms.values() if r.exists), key=lambda r: r.room_id)
    return {"rooms": [svc.admin_room_view(r) for r in rooms]}


@admin.get("/rooms/{room_id}", response_model=AdminRoomView, responses=_responses(401, 403))
async def get_room(room_id: RoomId, svc: Svc) -> dict[str, Any]:
    svc.require_ready()
    room = svc.read_model.room(room_id)
    if room is None:
        raise ApiError(404, "room_not_found", f"no room {room_id!r}")
    return svc.admin_room_view(room)


@admin.get("/rooms/{room_id}/stats", responses=_responses(401, 403))
async def room_stats(room_id: RoomId, svc: Svc) -> dict[str, Any]:
    svc.require_ready()
    if svc.read_model.room(room_id) is None:
        raise ApiError(404, "room_not_found", f"no room {room_id!r}")
    if svc.stats is None:
        raise ApiError(503, "stats_unavailable", "this replica does not follow the statistics topic")
    return svc.stats.describe(room_id)


@admin.post("/rooms/{room_id}/admit", status_code=202, response_model=AdmitAccepted, responses=_responses(401, 403))
async def admit(room_id: RoomId, svc: Svc, body: Annotated[AdmitBody, Body()] = AdmitBody()) -> dict[str, Any]:  # noqa: B008
    svc.require_ready()
    if svc.read_model.room(room_id) is None:
        raise ApiError(404, "room_not_found", f"no room {room_id!r}")
    await svc.publish(
        svc.topics.commands.name,
        AdmitRequested(room_id=room_id, requested_at=svc.clock(), count=body.count, above_capacity=body.above_capacity),
    )
    return {"room_id": room_id, "count": body.count, "above_capacity": body.above_capacity, "state": "accepted"}


@admin.post(
    "/rooms/{room_id}/archive",
    response_model=RoomPending,
    responses=_responses(
        401,
        403,
        409,
        s202={"model": RoomPending, "description": "accepted, not applied yet"},
    ),
)
async def archive_room(room_id: RoomId, svc: Svc) -> Response:
    """Retire a room with no live ticket: it leaves the read model and every snapshot; its
    history stays in room-events (docs/adr/0007-snapshots-compaction-retention.md)."""
    svc.require_ready()
    room = svc.read_model.room(room_id)
    if room is None:
        raise ApiError(404, "room_not_found", f"no room {room_id!r}")
    if room.active or room.waiting:
        raise ApiError(
            409, "room_not_empty", f"{room.active} admitted and {room.waiting} waiting: pause it and let them end"
        )
    await svc.publish(svc.topics.commands.name, RoomArchiveRequested(room_id=room_id, requested_at=svc.clock()))
    if not await svc.read_model.wait_until(lambda: svc.read_model.room(room_id) is None, svc.join_wait_s):
        return JSONResponse({"room_id": room_id, "state": "pending"}, status_code=202)
    return JSONResponse({"room_id": room_id, "state": "archived"}, status_code=200)


def create_public_app(services: Services, *, max_body_bytes: int = 64 * 1024) -> FastAPI:
    """The public listener's app: visitors' calls, the waiting page, the JWKS, ``/openapi.json``."""
    app = FastAPI(
        default_response_class=JSONResponse,
        title="waitroom",
        version="1",
        description="The visitors' API. The admin API and the docs are on the admin listener.",
        docs_url=None,
        redoc_url=None,
        # The automatic trailing-slash redirect builds its Location from the Host header.
        redirect_slashes=False,
    )
    app.add_middleware(HeadAsGet)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.state.services = services
    # The visitors' routes go straight into the app's route list, not through include_router: since
    # FastAPI 0.16x an included router is matched as a nested branch (its candidates, then the route
    # again inside it, with scope bookkeeping at each level), which was about a quarter of an
    # in-process status call (docs/benchmarks.md, Surge capacity). The router only carries tags.
    app.router.routes.extend(public.routes)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        ready = services.is_ready()
        return JSONResponse({"ready": ready, **services.read_model.describe()}, status_code=200 if ready else 503)

    _install_error_handlers(app)
    _declare_ticket_scheme(app)
    return app


def create_admin_app(
    services: Services,
    *,
    docs: bool = True,
    public_openapi: Callable[[], dict[str, Any]] | None = None,
    max_body_bytes: int = 64 * 1024,
) -> FastAPI:
    """The admin listener's app: ``/v1/admin/...``, its ``/openapi.json`` and, with ``docs``, Swagger
    UI of it plus a read-only Swagger UI of the public API (``public_openapi``)."""
    app = FastAPI(
        default_response_class=JSONResponse,
        title="waitroom admin",
        version="1",
        description="Operators' API: create, configure and admit. Every call needs the admin token.",
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    app.add_middleware(HeadAsGet)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(AdminAuthFirst, token=services.admin_token)  # outermost: before any body is read
    app.state.services = services
    app.include_router(admin)
    if docs:
        mount_docs(app, public_openapi or create_public_app(services).openapi)
    _install_error_handlers(app)
    return app


class HeadAsGet:
    """HEAD is answered wherever GET is (RFC 9110): the GET route runs, its body is not sent.

    FastAPI's routes take only the methods they declare, so HEAD would otherwise be 405.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: AsgiMessage) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {
                "loc": [str(x) if not isinstance(x, int) else x for x in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        first = fields[0] if fields else {"loc": [], "msg": "invalid"}
        where = ".".join(str(x) for x in first["loc"])
        detail = (
            f"the request is not valid: {where}: {first['msg']}"
            if where
            else f"the request is not valid: {first['msg']}"
        )
        return JSONResponse({"error": "invalid_request", "detail": detail, "fields": fields}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", error=type(exc).__name__)
        return _error(500, *UNEXPECTED)
