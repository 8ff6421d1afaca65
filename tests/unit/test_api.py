"""The HTTP handlers with hand-written fakes: an in-memory sequencer behind a recording publisher.

These check translation and error mapping, the split between the public and the admin app, the
client address behind trusted proxies and the docs; the real broker and processes are in tests/e2e.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError

from waitroom_core.room import RoomState, apply_all, decide, forget_ended
from waitroom_events.base import Message
from waitroom_events.codec import decode, encode
from waitroom_events.commands import Command, ExpireRequested, JoinRequested, LeaveRequested
from waitroom_events.heartbeats import Heartbeat
from waitroom_events.topics import TopicRegistry, topic_registry
from waitroom_platform.settings import KafkaSettings
from waitroom_ticketing.api import Services, create_admin_app, create_public_app
from waitroom_ticketing.edge import TrustedProxies
from waitroom_ticketing.fastpath import VisitorFastPath
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
    lag_s: float = 0.0
    offset: int = 0

    async def publish(self, topic: str, message: Message, **_: Any) -> None:
        if self.down:
            raise KafkaConnectionError("broker unreachable")
        self.published.append(message)
        if isinstance(message, Heartbeat) or self.hold:
            return
        if self.lag_s:  # the log answers, and the read model sees the effect a little later
            asyncio.get_running_loop().call_later(self.lag_s, self._sequence, message)
            return
        self._sequence(message)

    def _sequence(self, message: Message) -> None:
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


def unit_services(topics: TopicRegistry, *, join_wait_s: float) -> Services:
    """Services on a caught-up read model fed by a :class:`FakeLog` (``services.publisher``)."""
    read_model = ReadModel(KafkaSettings(), topics.room_events.name)
    read_model._tail.caught_up.set()
    return Services(
        topics=topics,
        publisher=FakeLog(read_model),  # type: ignore[arg-type]
        read_model=read_model,
        tickets=TicketTokens("unit-ticket-secret"),
        signer=EntryTokenSigner.ephemeral("waitroom", 60),
        admin_token="admin-token-for-unit-tests",
        limiter=RateLimiter(0, 1),
        join_wait_s=join_wait_s,
        publish_timeout_s=1.0,
    )


@pytest.fixture(params=["fastapi", "visitor fast path"])
async def api(request: pytest.FixtureRequest) -> Any:
    """The public app as the tests call it: every test runs twice, once on the FastAPI app alone and
    once behind ``VisitorFastPath`` (as ticketing serves it without telemetry), so both answer alike."""
    services = unit_services(TOPICS, join_wait_s=0.2)
    log: FakeLog = services.publisher  # type: ignore[assignment]
    public_app = create_public_app(services)
    admin_app = create_admin_app(services, public_openapi=public_app.openapi)
    served: Any = public_app
    if request.param == "visitor fast path":
        served = VisitorFastPath(public_app, services, max_body_bytes=64 * 1024)
    public = httpx.ASGITransport(app=served)
    admin = httpx.ASGITransport(app=admin_app)
    async with (
        httpx.AsyncClient(transport=public, base_url="http://api") as http,
        httpx.AsyncClient(transport=admin, base_url="http://admin") as admin_http,
    ):
        yield SimpleNamespace(
            http=http,
            admin=admin_http,
            log=log,
            services=services,
            public_app=public_app,
            admin_app=admin_app,
            served=served,
        )


async def _room(api: Any, room_id: str = "r1", **config: Any) -> None:
    response = await api.admin.put(f"/v1/admin/rooms/{room_id}", json={"capacity": 1, **config}, headers=ADMIN)
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
    response = await api.admin.put("/v1/admin/rooms/r1", json={"paused": True}, headers=ADMIN)
    assert response.status_code == 200
    assert response.json()["paused"] is True and response.json()["capacity"] == 1
    command = api.log.published[-1]
    assert command.paused is True and command.capacity is None  # type: ignore[attr-defined]


async def test_a_manual_admit_publishes_the_command_and_admits_above_capacity_when_asked(api: Any) -> None:
    await _room(api)
    tickets = [(await api.http.post("/v1/rooms/r1/tickets")).json() for _ in range(3)]
    admitted = await api.admin.post(
        "/v1/admin/rooms/r1/admit", json={"count": 2, "above_capacity": True}, headers=ADMIN
    )
    assert admitted.status_code == 202
    room = (await api.http.get("/v1/rooms/r1")).json()
    assert room["active"] == 3 and room["capacity"] == 1 and room["waiting"] == 0
    assert [t["queue_no"] for t in tickets] == [1, 2, 3]


async def test_admin_room_listing_shows_configuration_and_counters(api: Any) -> None:
    await _room(api, "b-room", target_url="https://site.example/")
    await _room(api, "a-room")
    await api.http.post("/v1/rooms/a-room/tickets")
    listing = (await api.admin.get("/v1/admin/rooms", headers=ADMIN)).json()["rooms"]
    assert [r["room_id"] for r in listing] == ["a-room", "b-room"]
    assert listing[0]["active"] == 1 and listing[1]["target_url"] == "https://site.example/"
    one = await api.admin.get("/v1/admin/rooms/nope", headers=ADMIN)
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


# ---------------------------------------------------------------- two listeners


async def test_admin_routes_are_not_on_the_public_app_and_visitor_routes_not_on_the_admin_app(api: Any) -> None:
    await _room(api)
    for method, path in [
        ("GET", "/v1/admin/rooms"),
        ("GET", "/v1/admin/rooms/r1"),
        ("PUT", "/v1/admin/rooms/r1"),
        ("POST", "/v1/admin/rooms/r1/admit"),
        ("GET", "/v1/admin/rooms/r1/stats"),
        ("GET", "/docs"),
        ("GET", "/redoc"),
    ]:
        for headers in ({}, ADMIN):
            response = await api.http.request(method, path, json={"capacity": 2}, headers=headers)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"] == "not_found", (method, path, response.text)
    assert (await api.http.get("/v1/rooms/r1")).json()["capacity"] == 1, "the PUT on the public app changed nothing"
    for path in ("/v1/rooms/r1", "/wait/r1", "/.well-known/jwks.json"):
        response = await api.admin.get(path)
        assert response.status_code == 404 and response.json()["error"] == "not_found", path
    public_paths = set((await api.http.get("/openapi.json")).json()["paths"])
    admin_paths = set((await api.admin.get("/openapi.json")).json()["paths"])
    assert "/v1/rooms/{room_id}/tickets" in public_paths and not any(p.startswith("/v1/admin") for p in public_paths)
    assert admin_paths and all(p.startswith("/v1/admin/") for p in admin_paths)


async def test_admin_calls_need_the_admin_token_401_without_403_with_a_wrong_one(api: Any) -> None:
    for headers, status, code in [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer "}, 401, "unauthorized"),
        ({"Authorization": "Basic YWRtaW46YWRtaW4="}, 401, "unauthorized"),
        ({"Authorization": "Bearer not-the-admin-token"}, 403, "forbidden"),
    ]:
        response = await api.admin.get("/v1/admin/rooms", headers=headers)
        assert response.status_code == status and response.json()["error"] == code, (headers, response.text)
    assert (await api.admin.get("/v1/admin/rooms", headers=ADMIN)).status_code == 200
    scheme = (await api.admin.get("/openapi.json")).json()["components"]["securitySchemes"]
    assert [s["scheme"] for s in scheme.values()] == ["bearer"], "the admin docs offer the token ('Authorize')"


# ---------------------------------------------------------------- docs without a CDN

URL_ATTRIBUTE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']*)["']""")
FOREIGN = re.compile(r"https?://|//[a-z]|cdn\.|jsdelivr|unpkg|googleapis|tiangolo", re.IGNORECASE)


async def test_no_page_either_app_serves_loads_anything_from_another_origin(api: Any) -> None:
    await _room(api, "shop", target_url="https://site.example/")
    pages = [(api.admin, path) for path in ("/docs", "/docs/public")] + [(api.http, "/wait/shop")]
    for client, path in pages:
        page = await client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
        urls = URL_ATTRIBUTE.findall(page.text)
        assert urls, path
        assert [u for u in urls if not u.startswith(("/", "#")) or u.startswith("//")] == [], (path, urls)
        assert not FOREIGN.search(page.text.replace("https://site.example/", "")), (path, FOREIGN.findall(page.text))
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "http" not in csp, (path, csp)
        for url in urls:
            if client is api.admin and url.startswith("/docs/"):
                asset = await client.get(url)
                assert asset.status_code == 200 and len(asset.content) > 100, url
    swagger = (await api.admin.get("/docs")).text
    assert "/docs/assets/swagger-ui-bundle.js" in swagger and "/docs/assets/swagger-ui.css" in swagger
    assert '"validatorUrl": null' in swagger, "no validator badge fetched from swagger.io"
    public_doc = await api.admin.get("/docs/public/openapi.json")
    assert public_doc.json() == (await api.http.get("/openapi.json")).json()


async def test_the_docs_can_be_switched_off_the_openapi_documents_stay(api: Any) -> None:
    admin_app = create_admin_app(api.services, docs=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=admin_app), base_url="http://admin") as http:
        for path in ("/docs", "/docs/public", "/docs/assets/swagger-ui-bundle.js"):
            assert (await http.get(path)).status_code == 404, path
        assert (await http.get("/openapi.json")).status_code == 200
        assert (await http.get("/v1/admin/rooms", headers=ADMIN)).status_code == 200
    assert (await api.http.get("/openapi.json")).status_code == 200


# ---------------------------------------------------------------- clients behind proxies


def _client(api: Any, peer: str) -> httpx.AsyncClient:
    """A client whose TCP peer address (as the server sees it) is ``peer``."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.public_app, client=(peer, 40000)), base_url="http://api"
    )


async def _codes(http: httpx.AsyncClient, n: int, forwarded: str | Sequence[str | bytes] | None = None) -> list[int]:
    codes = []
    for i in range(n):
        value = forwarded if forwarded is None or isinstance(forwarded, str) else forwarded[i]
        headers = {} if value is None else {"X-Forwarded-For": value}
        codes.append((await http.post("/v1/rooms/r1/tickets", headers=headers)).status_code)
    return codes


async def test_forwarded_clients_behind_a_trusted_proxy_each_get_their_own_bucket(api: Any) -> None:
    await _room(api, capacity=1000)
    api.services.limiter = RateLimiter(rate_per_s=0.001, burst=3)
    api.services.proxies = TrustedProxies.parse(["10.0.0.0/8"])
    async with _client(api, "10.1.2.3") as ingress:
        # Six visitors behind one ingress: 18 joins, where one shared bucket would refuse 15 of them.
        codes = [await _codes(ingress, 3, f"198.51.100.{n}") for n in range(1, 7)]
        assert codes == [[201, 201, 201]] * 6
        assert await _codes(ingress, 1, "198.51.100.1") == [429], "each one still has its own limit"
        # The ingress also keeps its own bucket for requests it makes itself (no header).
        assert await _codes(ingress, 4) == [201, 201, 201, 429]


async def test_a_chain_of_trusted_proxies_is_walked_from_the_right_and_a_spoofed_left_part_changes_nothing(
    api: Any,
) -> None:
    await _room(api, capacity=1000)
    api.services.limiter = RateLimiter(rate_per_s=0.001, burst=3)
    api.services.proxies = TrustedProxies.parse(["10.0.0.0/8", "192.0.2.10"])
    async with _client(api, "10.0.0.2") as proxy:
        # The visitor writes whatever it likes on the left; the proxies append the real address.
        spoofed = [f"203.0.113.{n}, 198.51.100.77, 192.0.2.10" for n in range(5)]
        assert await _codes(proxy, 5, spoofed) == [201, 201, 201, 429, 429]
        # The same visitor seen through two header lines is the same client.
        lines = await proxy.post(
            "/v1/rooms/r1/tickets", headers=[("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "198.51.100.77")]
        )
        assert lines.status_code == 429
        assert await _codes(proxy, 1, "203.0.113.1, 198.51.100.78, 192.0.2.10") == [201]


async def test_an_untrusted_peers_forwarded_header_is_ignored(api: Any) -> None:
    await _room(api, capacity=1000)
    api.services.limiter = RateLimiter(rate_per_s=0.001, burst=3)
    # Nothing trusted (the default): not even a proxy on localhost may name the client.
    async with _client(api, "127.0.0.1") as local:
        assert await _codes(local, 5, [f"198.51.100.{n}" for n in range(5)]) == [201, 201, 201, 429, 429]
    api.services.proxies = TrustedProxies.parse(["10.0.0.0/8"])
    async with _client(api, "203.0.113.50") as outsider:
        spoofed = [f"10.0.0.{n}, 198.51.100.{n}" for n in range(5)]
        assert await _codes(outsider, 5, spoofed) == [201, 201, 201, 429, 429]


async def test_ipv6_clients_share_a_bucket_per_64(api: Any) -> None:
    await _room(api, capacity=1000)
    api.services.limiter = RateLimiter(rate_per_s=0.001, burst=3)
    api.services.proxies = TrustedProxies.parse(["fd00::/8"])
    async with _client(api, "fd00::1") as ingress:
        same_64 = [f"2001:db8:1:2::{n:x}" for n in range(1, 5)] + ["2001:db8:1:2:ffff:ffff:ffff:ffff"]
        assert await _codes(ingress, 5, same_64) == [201, 201, 201, 429, 429]
        assert await _codes(ingress, 3, "2001:db8:1:3::1") == [201, 201, 201], "the next /64 is another client"
    async with _client(api, "2001:db8:9:9::1") as direct, _client(api, "2001:db8:9:9:abcd::2") as neighbour:
        assert await _codes(direct, 3) == [201, 201, 201]
        assert await _codes(neighbour, 1) == [429], "a peer's /64 is one client too"


async def test_malformed_forwarded_entries_are_ignored_safely(api: Any) -> None:
    await _room(api, capacity=1000)
    api.services.limiter = RateLimiter(rate_per_s=0.001, burst=3)
    api.services.proxies = TrustedProxies.parse(["10.0.0.0/8"])
    junk: list[str | bytes] = [
        "not-an-address",
        "198.51.100.1, unknown",
        "999.1.1.1",
        "[2001:db8::1",
        "198.51.100.2, ",
        ",,,",
        b"\xe9\xe9\xe9",  # not ASCII
        "198.51.100.3:notaport",
        "x" * 4000,
    ]
    async with _client(api, "10.9.9.9") as ingress:
        codes = await _codes(ingress, len(junk), junk)
    # Never a 500; a hop that is not an address stops the walk at the proxy that passed it on, so
    # all of these count against that proxy's one bucket, never against an address to its left.
    assert codes == [201, 201, 201] + [429] * (len(junk) - 3)
    async with _client(api, "10.9.9.9") as ingress:
        ok = await _codes(ingress, 1, "198.51.100.9:443, [2001:db8::7]:8443")
    assert ok == [201], "addresses with ports are addresses"


@pytest.mark.parametrize("token", [b"\xff\xfe", "tök".encode("latin-1"), b"a b", b"x" * 5000])
async def test_a_malformed_ticket_token_answers_401_or_404_with_a_code_never_500(api: Any, token: bytes) -> None:
    await _room(api, capacity=1)
    ticket = (await api.http.post("/v1/rooms/r1/tickets")).json()
    path = f"/v1/rooms/r1/tickets/{ticket['ticket_id']}"
    headers = [(b"authorization", b"Bearer " + token)]
    for method, url in (("GET", path), ("POST", f"{path}/heartbeat"), ("DELETE", path)):
        response = await api.http.request(method, url, headers=headers)
        assert response.status_code in (401, 404), (method, response.status_code, response.text)
        assert response.json()["error"] in ("unauthorized", "ticket_not_found")


async def test_head_is_answered_wherever_get_is_without_a_body(api: Any) -> None:
    await _room(api, capacity=1)
    got = await api.http.get("/v1/rooms/r1")
    head = await api.http.head("/v1/rooms/r1")
    assert head.status_code == got.status_code == 200
    assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]
    assert (await api.http.head("/.well-known/jwks.json")).status_code == 200
    assert (await api.admin.head("/v1/admin/rooms", headers=ADMIN)).status_code == 200


async def test_a_trailing_slash_is_not_redirected_to_a_url_built_from_the_host_header(api: Any) -> None:
    await _room(api, capacity=1)
    response = await api.http.get("/v1/rooms/r1/", headers={"Host": "evil.example"})
    assert response.status_code == 404 and "location" not in response.headers
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize(
    "config",
    [
        {"target_url": "http://["},
        {"target_url": "https://"},
        {"heartbeat_interval_s": 5e-324},
        {"heartbeat_interval_s": 0.4},
    ],
)
async def test_a_room_configuration_a_visitor_could_not_use_answers_422_with_a_code(
    api: Any, config: dict[str, Any]
) -> None:
    response = await api.admin.put("/v1/admin/rooms/r9", json={"capacity": 1, **config}, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.json()["error"] in ("invalid_config", "invalid_request")
    assert (await api.http.get("/v1/rooms/r9")).status_code == 404  # nothing was created


async def test_status_right_after_a_leave_answers_410_on_the_replica_that_accepted_it(api: Any) -> None:
    await _room(api, capacity=1)
    ticket = (await api.http.post("/v1/rooms/r1/tickets")).json()
    path = f"/v1/rooms/r1/tickets/{ticket['ticket_id']}"
    auth = {"Authorization": f"Bearer {ticket['ticket_token']}"}
    api.log.lag_s = 0.05
    assert (await api.http.delete(path, headers=auth)).status_code == 204
    after = await api.http.get(path, headers=auth)
    assert after.status_code == 410 and after.json()["error"] == "ticket_left"


async def test_a_leave_the_log_applies_only_after_the_wait_still_reads_as_left_on_that_replica(api: Any) -> None:
    """The soak found it: a leave answered 204 after the join wait, and the next GET said "admitted"."""
    await _room(api, capacity=1)
    ticket = (await api.http.post("/v1/rooms/r1/tickets")).json()
    path = f"/v1/rooms/r1/tickets/{ticket['ticket_id']}"
    auth = {"Authorization": f"Bearer {ticket['ticket_token']}"}
    api.log.lag_s = 0.6  # the sequencer slower than the API's wait (0.2 s here)
    assert (await api.http.delete(path, headers=auth)).status_code == 204
    assert api.services.read_model.ticket("r1", ticket["ticket_id"])[1].state.live  # not applied yet

    status = await api.http.get(path, headers=auth)
    beat = await api.http.post(f"{path}/heartbeat", headers=auth)
    again = await api.http.delete(path, headers=auth)
    assert (status.status_code, status.json()["error"]) == (410, "ticket_left")
    assert (beat.status_code, beat.json()["error"]) == (410, "ticket_left")
    assert again.status_code == 204
    leaves = [m for m in api.log.published if isinstance(m, LeaveRequested)]
    assert len(leaves) == 1, "a repeated leave while the first is in flight publishes nothing more"

    async with asyncio.timeout(5):  # until the log applied it
        while api.services.read_model.ticket("r1", ticket["ticket_id"])[1].state.live:
            await asyncio.sleep(0.02)
    assert (await api.http.get(path, headers=auth)).status_code == 410  # the read model answers now
    assert ticket["ticket_id"] not in api.services.leaving


@pytest.mark.parametrize("key", ["short-key-1", "aaaaaaaaaaaaaaaaaaaa", "abababababababababab"])
async def test_a_guessable_idempotency_key_is_refused_with_a_code(api: Any, key: str) -> None:
    await _room(api, capacity=1)
    response = await api.http.post("/v1/rooms/r1/tickets", headers={"Idempotency-Key": key})
    assert response.status_code == 422
    assert response.json()["error"] in ("invalid_request", "invalid_idempotency_key")
    assert not [m for m in api.log.published if isinstance(m, JoinRequested)], "nothing may be published"


async def test_a_malformed_idempotency_key_is_refused_as_a_header_parameter_would_be(api: Any) -> None:
    # the handler reads the header itself (no FastAPI Header parameter): the answer must stay the one
    # FastAPI's validation gave, field and all, and the first of two headers is the one checked
    await _room(api, capacity=1)
    headers = [("Idempotency-Key", "not a key!"), ("Idempotency-Key", "3f1c9e2a-5b7d-4c8e-9a6f-0d2b4e6a8c1f")]
    response = await api.http.post("/v1/rooms/r1/tickets", headers=headers)
    assert response.status_code == 422
    assert response.json() == {
        "error": "invalid_request",
        "detail": "the request is not valid: header.Idempotency-Key: String should match pattern "
        "'^[A-Za-z0-9._:-]{16,128}$'",
        "fields": [
            {
                "loc": ["header", "Idempotency-Key"],
                "msg": "String should match pattern '^[A-Za-z0-9._:-]{16,128}$'",
                "type": "string_pattern_mismatch",
            }
        ],
    }
    assert not [m for m in api.log.published if isinstance(m, JoinRequested)], "nothing may be published"
    good = await api.http.post("/v1/rooms/r1/tickets", headers={"idempotency-key": headers[1][1]})
    assert good.status_code == 201
    joins = [m for m in api.log.published if isinstance(m, JoinRequested)]
    assert [m.idempotency_key for m in joins] == [headers[1][1]]


async def test_a_replay_after_the_ticket_ended_answers_410_and_hands_out_no_token(api: Any) -> None:
    await _room(api, capacity=1)
    key = {"Idempotency-Key": "3f1c9e2a-5b7d-4c8e-9a6f-0d2b4e6a8c1f"}
    ticket = (await api.http.post("/v1/rooms/r1/tickets", headers=key)).json()
    replay = await api.http.post("/v1/rooms/r1/tickets", headers=key)
    assert replay.status_code == 200 and replay.json()["ticket_id"] == ticket["ticket_id"]
    auth = {"Authorization": f"Bearer {ticket['ticket_token']}"}
    assert (await api.http.delete(f"/v1/rooms/r1/tickets/{ticket['ticket_id']}", headers=auth)).status_code == 204
    after = await api.http.post("/v1/rooms/r1/tickets", headers=key)
    assert after.status_code == 410 and after.json()["error"] == "ticket_left"
    assert "ticket_token" not in after.text


async def test_a_forgotten_ticket_still_answers_410_to_status_heartbeat_and_a_replayed_join(api: Any) -> None:
    await _room(api, capacity=1)
    key = {"Idempotency-Key": "9d2e4f6a-8b1c-4d3e-a5f7-1b3d5f7a9c2e"}
    ticket = (await api.http.post("/v1/rooms/r1/tickets", headers=key)).json()
    path = f"/v1/rooms/r1/tickets/{ticket['ticket_id']}"
    auth = {"Authorization": f"Bearer {ticket['ticket_token']}"}
    assert (await api.http.delete(path, headers=auth)).status_code == 204
    # long after: both the sequencer's room and the read model's keep only a tombstone of it
    for room in (api.log.rooms["r1"], api.services.read_model.rooms["r1"]):
        assert forget_ended(room, math.inf) == 1 and ticket["ticket_id"] not in room.tickets
    published = len(api.log.published)

    status = await api.http.get(path, headers=auth)
    beat = await api.http.post(f"{path}/heartbeat", headers=auth)
    replay = await api.http.post("/v1/rooms/r1/tickets", headers=key)
    leave = await api.http.delete(path, headers=auth)

    assert [r.status_code for r in (status, beat, replay, leave)] == [410, 410, 410, 204]
    assert {r.json()["error"] for r in (status, beat, replay)} == {"ticket_left"}
    assert len(api.log.published) == published, "a forgotten ticket publishes no join, heartbeat or leave"


async def test_a_join_into_a_free_slot_answers_admitted_with_an_entry_token(api: Any) -> None:
    # TicketIssued and TicketAdmitted come in one batch: the answer shows the ticket after both
    await _room(api, capacity=1)
    api.log.lag_s = 0.02  # the join waits on the read model for its ticket
    first = await api.http.post("/v1/rooms/r1/tickets")
    second = await api.http.post("/v1/rooms/r1/tickets")

    assert first.status_code == second.status_code == 201
    assert first.json()["state"] == "admitted" and first.json()["entry_token"]
    assert second.json()["state"] == "waiting" and second.json()["position"] == 0


async def test_an_expired_ticket_leaves_the_entry_token_cache_and_the_heartbeat_stamps(api: Any) -> None:
    """The soak's growth: an expiry (decided by the reaper, seen only through the log) dropped
    neither the ticket's cached entry token nor its heartbeat stamp, so both grew with every
    visitor who went silent."""
    await _room(api, capacity=1)
    ticket = (await api.http.post("/v1/rooms/r1/tickets")).json()
    auth = {"Authorization": f"Bearer {ticket['ticket_token']}"}
    beat = await api.http.post(f"/v1/rooms/r1/tickets/{ticket['ticket_id']}/heartbeat", headers=auth)
    assert beat.status_code == 200 and beat.json()["entry_token"]
    assert api.services.signer.cached == 1
    assert ticket["ticket_id"] in api.services.heartbeats.acknowledged

    await api.log.publish(
        TOPICS.commands.name, ExpireRequested(room_id="r1", ticket_id=ticket["ticket_id"], requested_at=time.time())
    )
    assert api.services.read_model.ticket("r1", ticket["ticket_id"])[1].state.value == "expired"
    assert api.services.signer.cached == 0
    assert ticket["ticket_id"] not in api.services.heartbeats.acknowledged
    after = await api.http.get(f"/v1/rooms/r1/tickets/{ticket['ticket_id']}", headers=auth)
    assert after.status_code == 410 and after.json()["error"] == "ticket_expired"
