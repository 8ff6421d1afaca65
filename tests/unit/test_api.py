"""The HTTP handlers with hand-written fakes: an in-memory sequencer behind a recording publisher.

These check translation and error mapping; the real broker and processes are in tests/e2e.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError

from waitroom_core.room import RoomState, apply_all, decide
from waitroom_events.base import Message
from waitroom_events.codec import decode, encode
from waitroom_events.commands import Command
from waitroom_events.heartbeats import Heartbeat
from waitroom_events.topics import topic_registry
from waitroom_platform.settings import KafkaSettings
from waitroom_ticketing.api import Services, create_app
from waitroom_ticketing.ratelimit import RateLimiter
from waitroom_ticketing.read_model import ReadModel
from waitroom_ticketing.tokens import EntryTokenSigner, TicketTokens

TOPICS = topic_registry("unit", 1)
ADMIN = {"Authorization": "Bearer admin-token-for-unit-tests"}


@dataclass
class FakeLog:
    """Records what was published; sequences commands at once unless told to hold them."""

    read_model: ReadModel
    published: list[Message] = field(default_factory=list)
    rooms: dict[str, RoomState] = field(default_factory=dict)
    hold: bool = False
    down: bool = False
    offset: int = 0

    async def publish(self, topic: str, message: Message, **_: Any) -> None:
        if self.down:
            raise KafkaConnectionError("broker unreachable")
        self.published.append(message)
        if isinstance(message, Heartbeat) or self.hold:
            return
        room = self.rooms.setdefault(message.room_id, RoomState(message.room_id))
        command: Command = message  # type: ignore[assignment]
        events = decide(room, command, time.time())
        apply_all(room, events)
        read_back = []
        for event in events:
            encoded = encode(event)  # through the codec, as the log would carry it
            read_back.append(decode(encoded.value, encoded.headers))
            self.offset += 1
        self.read_model.apply(read_back)  # type: ignore[arg-type]


@pytest.fixture
async def api() -> Any:
    read_model = ReadModel(KafkaSettings(), TOPICS.room_events.name)
    read_model._tail.caught_up.set()
    log = FakeLog(read_model)
    services = Services(
        topics=TOPICS,
        publisher=log,  # type: ignore[arg-type]
        read_model=read_model,
        tickets=TicketTokens("unit-ticket-secret"),
        signer=EntryTokenSigner.ephemeral("waitroom", 60),
        admin_token="admin-token-for-unit-tests",
        limiter=RateLimiter(0, 1),
        join_wait_s=0.2,
        publish_timeout_s=1.0,
    )
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield SimpleNamespace(http=http, log=log, services=services)


async def _room(api: Any, room_id: str = "r1", **config: Any) -> None:
    response = await api.http.put(f"/v1/admin/rooms/{room_id}", json={"capacity": 1, **config}, headers=ADMIN)
    assert response.status_code == 201, response.text


async def test_a_join_answers_503_with_retry_after_when_the_log_is_unreachable(api: Any) -> None:
    await _room(api)
    api.log.down = True
    response = await api.http.post("/v1/rooms/r1/tickets")
    assert response.status_code == 503
    assert response.json()["error"] == "log_unavailable"
    assert response.headers["Retry-After"] == "2"


async def test_a_join_not_sequenced_in_time_answers_202_pending_and_status_stays_pending(api: Any) -> None:
    await _room(api)
    api.log.hold = True
    joined = await api.http.post("/v1/rooms/r1/tickets")
    assert joined.status_code == 202
    body = joined.json()
    assert body["state"] == "pending" and body["ticket_token"]
    assert joined.headers["Location"] == f"/v1/rooms/r1/tickets/{body['ticket_id']}"
    status = await api.http.get(joined.headers["Location"], headers={"Authorization": f"Bearer {body['ticket_token']}"})
    assert status.status_code == 202 and status.json()["state"] == "pending"


async def test_joins_beyond_the_per_client_burst_answer_429_with_retry_after(api: Any) -> None:
    await _room(api, capacity=100)
    api.services.limiter = RateLimiter(rate_per_s=1, burst=3)
    codes = [(await api.http.post("/v1/rooms/r1/tickets")).status_code for _ in range(5)]
    assert codes == [201, 201, 201, 429, 429]
    limited = await api.http.post("/v1/rooms/r1/tickets")
    assert limited.json()["error"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1


async def test_calls_before_the_read_model_caught_up_answer_503_starting(api: Any) -> None:
    api.services.is_ready = lambda: False
    response = await api.http.get("/v1/rooms/r1")
    assert response.status_code == 503 and response.json()["error"] == "starting"
    assert (await api.http.get("/readyz")).status_code == 503
    assert (await api.http.get("/healthz")).status_code == 200


async def test_an_unknown_path_and_a_wrong_method_get_json_errors(api: Any) -> None:
    missing = await api.http.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = await api.http.patch("/v1/rooms/r1")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


async def test_reconfiguring_answers_200_and_publishes_only_the_changed_settings(api: Any) -> None:
    await _room(api)
    response = await api.http.put("/v1/admin/rooms/r1", json={"paused": True}, headers=ADMIN)
    assert response.status_code == 200
    assert response.json()["paused"] is True and response.json()["capacity"] == 1
    command = api.log.published[-1]
    assert command.paused is True and command.capacity is None  # type: ignore[attr-defined]


async def test_a_manual_admit_publishes_the_command_and_admits_above_capacity_when_asked(api: Any) -> None:
    await _room(api)
    tickets = [(await api.http.post("/v1/rooms/r1/tickets")).json() for _ in range(3)]
    admitted = await api.http.post("/v1/admin/rooms/r1/admit", json={"count": 2, "above_capacity": True}, headers=ADMIN)
    assert admitted.status_code == 202
    room = (await api.http.get("/v1/rooms/r1")).json()
    assert room["active"] == 3 and room["capacity"] == 1 and room["waiting"] == 0
    assert [t["queue_no"] for t in tickets] == [1, 2, 3]


async def test_admin_room_listing_shows_configuration_and_counters(api: Any) -> None:
    await _room(api, "b-room", target_url="https://site.example/")
    await _room(api, "a-room")
    await api.http.post("/v1/rooms/a-room/tickets")
    listing = (await api.http.get("/v1/admin/rooms", headers=ADMIN)).json()["rooms"]
    assert [r["room_id"] for r in listing] == ["a-room", "b-room"]
    assert listing[0]["active"] == 1 and listing[1]["target_url"] == "https://site.example/"
    one = await api.http.get("/v1/admin/rooms/nope", headers=ADMIN)
    assert one.status_code == 404 and one.json()["error"] == "room_not_found"


async def test_the_waiting_page_carries_a_fresh_csp_nonce_and_embeds_the_room_safely(api: Any) -> None:
    await _room(api, "shop", target_url="https://site.example/?a=</script><script>alert(1)</script>")
    page = await api.http.get("/wait/shop")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    nonce = csp.split("'nonce-", 1)[1].split("'", 1)[0]
    assert f'<script nonce="{nonce}">' in page.text
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "</script><script>alert(1)" not in page.text, "a target URL must not close the script element"
    assert page.headers["Cache-Control"] == "no-store"
    again = await api.http.get("/wait/shop")
    assert again.headers["Content-Security-Policy"] != csp, "every response has its own nonce"
    missing = await api.http.get("/wait/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "room_not_found"
    malformed = await api.http.get("/wait/bad%20room!")
    assert malformed.status_code == 422 and malformed.json()["error"] == "invalid_request"
