"""The AWS Virtual Waiting Room facade in-process: an in-memory sequencer behind a recording publisher.

What AWS's clients and operators see (paths, bodies, statuses, claims) and the keeper's rules with a
moved clock; the real broker, reaper and 200 concurrent clients are in tests/e2e/test_aws_vwr.py.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import jwt
import pytest

from waitroom_core.room import RoomState, Ticket, TicketState, apply_all, decide
from waitroom_events.base import Message
from waitroom_events.commands import Command, LeaveRequested
from waitroom_events.heartbeats import Heartbeat
from waitroom_events.topics import topic_registry
from waitroom_platform.settings import KafkaSettings
from waitroom_ticketing.api import Services, create_admin_app, create_public_app
from waitroom_ticketing.aws_vwr import mount_aws_vwr
from waitroom_ticketing.aws_vwr_state import (
    Periods,
    TokenAnswer,
    is_facade_request,
    keep_alive,
    may_claim,
    new_request_id,
    token_answer,
)
from waitroom_ticketing.ratelimit import RateLimiter
from waitroom_ticketing.read_model import ReadModel
from waitroom_ticketing.settings import TicketingSettings
from waitroom_ticketing.tokens import EntryTokenSigner, TicketTokens

TOPICS = topic_registry("unit", 1)
ADMIN_TOKEN = "admin-token-for-unit-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PERIODS = Periods(queue_position_expiry_s=900, validity_s=3600)


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))  # real time: PyJWT checks iat and exp against it

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeLog:
    """Sequences commands at once through the core and feeds the events to the read model."""

    read_model: ReadModel
    clock: Clock
    published: list[Message] = field(default_factory=list)
    rooms: dict[str, RoomState] = field(default_factory=dict)

    async def publish(self, topic: str, message: Message, **_: Any) -> None:
        self.published.append(message)
        if not isinstance(message, Heartbeat):
            room = self.rooms.setdefault(message.room_id, RoomState(message.room_id))
            command: Command = message  # type: ignore[assignment]
            events = decide(room, command, self.clock())
            apply_all(room, events)
            self.read_model.apply(events)

    async def send(self, topic: str, message: Message, **kwargs: Any) -> asyncio.Future[None]:
        await self.publish(topic, message, **kwargs)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def heartbeats(self) -> list[str]:
        return [m.ticket_id for m in self.published if isinstance(m, Heartbeat)]


@pytest.fixture
async def vwr() -> Any:
    clock = Clock()
    read_model = ReadModel(KafkaSettings(), TOPICS.room_events.name)
    read_model._tail.caught_up.set()
    log = FakeLog(read_model, clock)
    services = Services(
        topics=TOPICS,
        publisher=log,  # type: ignore[arg-type]
        read_model=read_model,
        tickets=TicketTokens("unit-ticket-secret"),
        signer=EntryTokenSigner.ephemeral("waitroom", 60),
        admin_token=ADMIN_TOKEN,
        limiter=RateLimiter(0, 1),
        join_wait_s=0.2,
        publish_timeout_s=1.0,
        clock=clock,
    )
    public_app = create_public_app(services)
    admin_app = create_admin_app(services, public_openapi=public_app.openapi)
    settings = TicketingSettings(aws_vwr_enabled=True, aws_vwr_prefix="/aws-vwr")
    (keeper,) = mount_aws_vwr(settings, services, public_app, admin_app)
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=public_app), base_url="http://site") as http,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=admin_app), base_url="http://admin") as admin,
    ):
        response = await admin.put("/v1/admin/rooms/evt", json={"capacity": 0}, headers=ADMIN)
        assert response.status_code == 201, response.text
        yield SimpleNamespace(http=http, admin=admin, log=log, clock=clock, keeper=keeper, services=services)


async def _assign(vwr: Any, event_id: str = "evt") -> str:
    response = await vwr.http.post("/aws-vwr/assign_queue_num", json={"event_id": event_id})
    assert response.status_code == 200, response.text
    request_id: str = response.json()["api_request_id"]
    return request_id


async def _serve(vwr: Any, count: int) -> int:
    response = await vwr.admin.post(
        "/aws-vwr/increment_serving_counter", json={"event_id": "evt", "increment_by": count}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    serving: int = response.json()["serving_num"]
    return serving


async def test_the_client_flow_assign_queue_num_serving_num_generate_token_verifies_against_public_key(
    vwr: Any,
) -> None:
    first, second = await _assign(vwr), await _assign(vwr)
    queue = await vwr.http.get("/aws-vwr/queue_num", params={"event_id": "evt", "request_id": second})
    assert queue.status_code == 200
    assert queue.json() == {"queue_number": 2, "entry_time": int(vwr.clock.now), "event_id": "evt", "status": 1}
    assert queue.headers["Access-Control-Allow-Origin"] == "*"

    waiting = await vwr.http.post("/aws-vwr/generate_token", json={"event_id": "evt", "request_id": first})
    assert (waiting.status_code, waiting.json()) == (202, {"error": "Request ID not being served yet"})
    assert (await vwr.http.get("/aws-vwr/serving_num?event_id=evt")).json() == {"serving_counter": "0"}
    assert (await vwr.http.get("/aws-vwr/waiting_num?event_id=evt")).json() == {"waiting_num": 2}

    assert await _serve(vwr, 1) == 1
    assert (await vwr.http.get("/aws-vwr/serving_num?event_id=evt")).json() == {"serving_counter": "1"}
    assert (await vwr.http.get("/aws-vwr/waiting_num?event_id=evt")).json() == {"waiting_num": 1}
    vwr.clock.now += 7
    served = await vwr.http.post("/aws-vwr/generate_token", json={"event_id": "evt", "request_id": first})
    assert served.status_code == 200
    body = served.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 - 7

    jwk = (await vwr.http.get("/aws-vwr/public_key?event_id=evt")).json()
    assert set(jwk) == {"kty", "alg", "kid", "n", "e"} and jwk["alg"] == "RS256"
    key = jwt.PyJWK(jwk).key
    uses = {}
    for name in ("access_token", "refresh_token", "id_token"):
        assert jwt.get_unverified_header(body[name]) == {"alg": "RS256", "typ": "JWT", "kid": jwk["kid"]}
        claims = jwt.decode(body[name], key, algorithms=["RS256"], audience="evt")
        uses[name] = claims.pop("token_use")
        issued = int(vwr.clock.now) - 7
        assert claims == {
            "aud": "evt",
            "sub": first,
            "queue_position": 1,
            "iat": issued,
            "nbf": issued,
            "exp": issued + 3600,
            "iss": "http://site/aws-vwr",
        }
    assert uses == {"access_token": "access", "refresh_token": "refresh", "id_token": "id"}

    again = await vwr.http.post("/aws-vwr/generate_token", json={"event_id": "evt", "request_id": first})
    assert again.json()["access_token"] == body["access_token"]


async def test_an_unknown_event_and_malformed_requests_get_aws_statuses_and_bodies(vwr: Any) -> None:
    http = vwr.http
    assert (await http.post("/aws-vwr/assign_queue_num", json={"event_id": "nope"})).json() == {
        "error": "Invalid event ID"
    }
    bad_body = await http.post("/aws-vwr/assign_queue_num", content=b"{not json")
    assert (bad_body.status_code, bad_body.json()) == (400, {"message": "Invalid request body"})
    assert (await http.post("/aws-vwr/assign_queue_num", json={"event_id": 7})).status_code == 400
    missing = await http.get("/aws-vwr/queue_num?event_id=evt")
    assert (missing.status_code, missing.json()) == (
        400,
        {"message": "Missing required request parameters: [request_id]"},
    )
    bad_id = await http.get("/aws-vwr/queue_num", params={"event_id": "evt", "request_id": "x"})
    assert (bad_id.status_code, bad_id.json()) == (400, {"error": "Invalid event or request ID"})
    unknown = await http.get("/aws-vwr/queue_num", params={"event_id": "evt", "request_id": new_request_id()})
    assert (unknown.status_code, unknown.json()) == (202, {"error": "Request ID not found"})
    token = await http.post("/aws-vwr/generate_token", json={"event_id": "evt", "request_id": new_request_id()})
    assert (token.status_code, token.json()) == (400, {"error": "Invalid request ID"})
    for path in ("serving_num", "waiting_num"):
        response = await http.get(f"/aws-vwr/{path}?event_id=nope")
        assert (response.status_code, response.json()) == (400, {"error": "Invalid event ID"})
    assert (await http.get("/aws-vwr/public_key?event_id=nope")).json() == {"error": "Invalid request ID"}
    preflight = await http.options("/aws-vwr/generate_token")
    assert preflight.status_code == 200 and preflight.headers["Access-Control-Allow-Methods"] == "POST,OPTIONS"


async def test_private_calls_are_on_the_admin_listener_only_and_need_the_admin_token(vwr: Any) -> None:
    body = {"event_id": "evt", "increment_by": 1}
    assert (await vwr.http.post("/aws-vwr/increment_serving_counter", json=body)).status_code == 404
    assert (await vwr.http.get("/aws-vwr/num_active_tokens?event_id=evt")).status_code == 404
    assert (await vwr.admin.post("/aws-vwr/increment_serving_counter", json=body)).status_code == 401
    wrong = {"Authorization": "Bearer not-the-admin-token"}
    assert (await vwr.admin.post("/aws-vwr/increment_serving_counter", json=body, headers=wrong)).status_code == 403
    assert (await vwr.admin.get("/aws-vwr/serving_num?event_id=evt")).status_code == 404
    negative = await vwr.admin.post(
        "/aws-vwr/increment_serving_counter", json={"event_id": "evt", "increment_by": -1}, headers=ADMIN
    )
    assert negative.status_code == 400 and "negative" in negative.json()["error"]
    unknown = await vwr.admin.post(
        "/aws-vwr/increment_serving_counter", json={"event_id": "nope", "increment_by": 1}, headers=ADMIN
    )
    assert (unknown.status_code, unknown.json()) == (400, {"error": "Invalid event ID"})


async def test_increment_serving_counter_admits_above_capacity_in_queue_order(vwr: Any) -> None:
    ids = [await _assign(vwr) for _ in range(5)]
    assert await _serve(vwr, 3) == 3
    room = vwr.services.read_model.room("evt")
    assert [room.tickets[i].state for i in ids] == [TicketState.ADMITTED] * 3 + [TicketState.WAITING] * 2
    assert await _serve(vwr, 10) == 5  # only five in line: the counter stops at the last number
    admits = [m for m in vwr.log.published if type(m).__name__ == "AdmitRequested"]
    assert [(a.count, a.above_capacity) for a in admits] == [(3, True), (10, True)]


async def test_update_session_ends_the_session_and_its_tokens_are_refused_with_410(vwr: Any) -> None:
    request_id = await _assign(vwr)
    await _serve(vwr, 1)
    assert (
        await vwr.http.post("/aws-vwr/generate_token", json={"event_id": "evt", "request_id": request_id})
    ).status_code == 200
    active = await vwr.admin.get("/aws-vwr/num_active_tokens?event_id=evt", headers=ADMIN)
    assert active.json() == {"active_tokens": 1}
    session = {"event_id": "evt", "request_id": request_id, "status": 1}
    ended = await vwr.admin.post("/aws-vwr/update_session", json=session, headers=ADMIN)
    assert ended.status_code == 200 and ended.json()["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert isinstance(vwr.log.published[-1], LeaveRequested)
    again = await vwr.admin.post("/aws-vwr/update_session", json=session, headers=ADMIN)
    assert (again.status_code, again.json()) == (404, {"error": "Request ID doesn't exist or status already set."})
    token = await vwr.http.post("/aws-vwr/generate_token", json={"event_id": "evt", "request_id": request_id})
    assert (token.status_code, token.json()) == (410, {"error": "Token corresponding to request id has expired"})
    active = await vwr.admin.get("/aws-vwr/num_active_tokens?event_id=evt", headers=ADMIN)
    assert active.json() == {"active_tokens": 0}


async def test_queue_pos_expiry_counts_down_from_admission_and_expired_tokens_lists_passed_exp(vwr: Any) -> None:
    request_id = await _assign(vwr)
    params = {"event_id": "evt", "request_id": request_id}
    assert (await vwr.http.get("/aws-vwr/queue_pos_expiry", params=params)).status_code == 202
    await _serve(vwr, 1)
    vwr.clock.now += 100
    left = await vwr.http.get("/aws-vwr/queue_pos_expiry", params=params)
    assert left.json() == {"expires_in": 800}
    vwr.clock.now += 801  # more than the period: AWS says 0 left at exactly 900
    gone = await vwr.http.get("/aws-vwr/queue_pos_expiry", params=params)
    assert (gone.status_code, gone.json()) == (410, {"error": "Queue position has expired"})
    listed = await vwr.admin.get("/aws-vwr/expired_tokens?event_id=evt", headers=ADMIN)
    assert listed.json() == []
    vwr.clock.now += 3000
    listed = await vwr.admin.get("/aws-vwr/expired_tokens?event_id=evt", headers=ADMIN)
    assert listed.json() == [request_id]


async def test_the_keeper_heartbeats_waiting_tickets_and_served_ones_until_their_periods_end(vwr: Any) -> None:
    unclaimed, claimed, waiting = [await _assign(vwr) for _ in range(3)]
    native = await vwr.http.post("/v1/rooms/evt/tickets")
    assert native.status_code in (201, 202)
    await _serve(vwr, 2)
    assert (
        await vwr.http.post("/aws-vwr/generate_token", json={"event_id": "evt", "request_id": claimed})
    ).status_code == 200

    served_at = vwr.clock.now
    assert sorted(await _beats(vwr, served_at)) == sorted([unclaimed, claimed, waiting])  # never the native one
    assert sorted(await _beats(vwr, served_at + 901)) == sorted([claimed, waiting])  # the unclaimed one lapsed
    assert await _beats(vwr, served_at + 3601) == [waiting]  # the claimed session's tokens expired


async def _beats(vwr: Any, at: float) -> list[str]:
    vwr.clock.now = at
    before = len(vwr.log.heartbeats())
    await vwr.keeper.beat(at)
    beats: list[str] = vwr.log.heartbeats()[before:]
    return beats


def _ticket(state: TicketState, *, admitted_at: float | None = 100.0, ended_at: float | None = None) -> Ticket:
    return Ticket(new_request_id(), 1, state, issued_at=50.0, admitted_at=admitted_at, ended_at=ended_at)


def test_a_session_that_ran_out_gets_its_tokens_back_and_an_unclaimed_lapsed_position_gets_410() -> None:
    assert token_answer(_ticket(TicketState.WAITING, admitted_at=None), PERIODS) is TokenAnswer.NOT_SERVED
    assert token_answer(_ticket(TicketState.ADMITTED), PERIODS) is TokenAnswer.TOKENS
    ran_out = _ticket(TicketState.EXPIRED, ended_at=100.0 + 3600 + 25)
    assert token_answer(ran_out, PERIODS) is TokenAnswer.TOKENS  # on any replica: it lived too long to be unclaimed
    short = Periods(queue_position_expiry_s=2, validity_s=6)
    short_session = _ticket(TicketState.EXPIRED, ended_at=100.0 + 6 + 4)
    assert token_answer(short_session, short, claimed_here=True, timeout_s=4) is TokenAnswer.TOKENS
    assert token_answer(short_session, short, claimed_here=False, timeout_s=4) is TokenAnswer.POSITION_EXPIRED
    lapsed = _ticket(TicketState.EXPIRED, ended_at=100.0 + 900 + 25)
    assert token_answer(lapsed, PERIODS) is TokenAnswer.POSITION_EXPIRED
    assert token_answer(_ticket(TicketState.LEFT, ended_at=200.0), PERIODS) is TokenAnswer.SESSION_ENDED
    assert keep_alive(_ticket(TicketState.WAITING, admitted_at=None), PERIODS, 10**9)


def test_facade_request_ids_are_version_8_uuids_that_aws_request_id_checks_accept() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_facade_request(i) for i in ids)
    assert not is_facade_request("26a07142-098a-4bea-b67d-1fe5a098bf29")  # a version-4 (waitroom's own)
    assert not is_facade_request("not-a-uuid")


def test_outside_development_the_facade_needs_its_own_key_file() -> None:
    with pytest.raises(ValueError, match="aws_vwr_key_file"):
        TicketingSettings(
            aws_vwr_enabled=True,
            common={"env": "production"},
            admin_token="a-real-admin-token-0123",
            ticket_secret="a-real-ticket-secret-0123",
            jwt_keys_dir="/tmp",
        )


async def test_a_served_position_unclaimed_past_the_expiry_period_gets_410_and_a_claimed_one_its_set_again(
    vwr: Any,
) -> None:
    claimer, idler = await _assign(vwr), await _assign(vwr)
    await _serve(vwr, 2)
    first = await vwr.http.post("/aws-vwr/generate_token", json={"event_id": "evt", "request_id": claimer})
    vwr.clock.now += 901
    late = await vwr.http.post("/aws-vwr/generate_token", json={"event_id": "evt", "request_id": idler})
    assert (late.status_code, late.json()) == (410, {"error": "Queue position has expired"})
    again = await vwr.http.post("/aws-vwr/generate_token", json={"event_id": "evt", "request_id": claimer})
    assert again.status_code == 200 and again.json()["access_token"] == first.json()["access_token"]


def test_a_ticket_still_admitted_well_past_its_lapse_counts_as_claimed_on_another_replica() -> None:
    served = _ticket(TicketState.ADMITTED, admitted_at=100.0)
    assert not may_claim(served, PERIODS, 100.0 + 901, claimed_here=False, timeout_s=20)
    assert may_claim(served, PERIODS, 100.0 + 901, claimed_here=True, timeout_s=20)
    # the reaper would have expired an unclaimed one by now: some replica keeps it, for a claim
    assert may_claim(served, PERIODS, 100.0 + 900 + 20 + 12, claimed_here=False, timeout_s=20)
    assert keep_alive(served, PERIODS, 100.0 + 900 + 20 + 12, timeout_s=20)
    assert not keep_alive(served, PERIODS, 100.0 + 3601, timeout_s=20)
