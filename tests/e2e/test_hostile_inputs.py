"""Issue 14's hand-made hostile inputs against a running ticketing process, over real sockets.

One process (API + sequencer, the session's Kafka) with low limits so each one is cheap to reach:
a 2 s header timeout, 30 connections per listener. Every input must get a clear 4xx (or the 503
of the connection limit) with the ``{"error": code, "detail": ...}`` body where the API sends
JSON, and afterwards the process must still serve a normal join, status and heartbeat and its
log must hold no traceback. The unit layer (tests/unit/test_server_limits.py, test_api.py) checks
the same rules on an in-process server; this is the process as deployed, with its own settings.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from e2e.conftest import TicketingLauncher, TicketingProcess
from support.http import ADMIN_TOKEN, admin_headers, bearer, create_room
from support.kafka_log import read_topic

from waitroom_events.heartbeats import Heartbeat, HeartbeatBatch
from waitroom_events.topics import TopicRegistry, topic_registry
from waitroom_platform.admin import ensure_topics
from waitroom_ticketing.tokens import write_private_key

pytestmark = pytest.mark.asyncio(loop_scope="session")

HEADER_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 30
MAX_BODY_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024
ROOM = "hostile"


@dataclass
class Running:
    svc: TicketingProcess
    topics: TopicRegistry
    bootstrap: str

    def address(self, admin: bool = False) -> tuple[str, int]:
        url = self.svc.admin_url if admin else self.svc.url
        host, port = url.removeprefix("http://").split(":")
        return host, int(port)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def running(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    base = tmp_path_factory.mktemp("hostile")
    keys = base / "jwt-keys"
    keys.mkdir()
    write_private_key(keys / "2026-11-01.pem")
    topics = topic_registry(prefix=f"t{uuid.uuid4().hex[:8]}", room_partitions=3)
    await ensure_topics(kafka_bootstrap, topics.all())
    launcher = TicketingLauncher(kafka_bootstrap, base, keys)
    (svc,) = await asyncio.to_thread(
        launcher,
        topics,
        WAITROOM_TICKETING_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        WAITROOM_TICKETING_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        WAITROOM_TICKETING_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        WAITROOM_TICKETING_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
    )
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            await create_room(http, svc.admin_url, ROOM, capacity=1, heartbeat_interval_s=5.0, heartbeat_timeout_s=20.0)
        yield Running(svc, topics, kafka_bootstrap)
    finally:
        await asyncio.to_thread(launcher.stop_all)


# ---------------------------------------------------------------------------------------------
# raw HTTP/1.1 over a socket: exactly the bytes we mean, nothing a client library would fix up


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    took_s: float

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> str:
        assert self.headers.get("content-type", "").startswith("application/json"), (self.status, self.headers)
        body = self.json()
        assert set(body) >= {"error", "detail"}, body
        code: str = body["error"]
        return code


async def exchange(address: tuple[str, int], data: bytes, *, timeout: float = 10.0) -> Answer:
    """Send ``data``, read until the server closes the connection."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(*address)
    try:
        if data:
            writer.write(data)
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return parse(raw, time.monotonic() - started)


def parse(raw: bytes, took_s: float) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1]) if head else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return Answer(status, headers, body, took_s)


def request(method: str, path: str, *headers: bytes, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close", *headers]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def join(http: httpx.AsyncClient, running: Running, **headers: str) -> httpx.Response:
    return await http.post(f"{running.svc.url}/v1/rooms/{ROOM}/tickets", headers=headers)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [b"\xff\xfe", "tök".encode("latin-1"), b"\xe2\x82\xac" * 10, b"\x80"])
async def test_non_ascii_bearer_bytes_on_status_heartbeat_and_leave_answer_a_4xx_with_a_code(
    running: Running, token: bytes
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        ticket = (await join(http, running)).json()
    path = f"/v1/rooms/{ROOM}/tickets/{ticket['ticket_id']}"
    for method, url in (("GET", path), ("POST", f"{path}/heartbeat"), ("DELETE", path)):
        answer = await exchange(running.address(), request(method, url, b"Authorization: Bearer " + token))
        assert answer.status in (401, 404), (method, answer.status, answer.body)
        assert answer.error() in ("unauthorized", "ticket_not_found")


@pytest.mark.parametrize(
    "authorization", [b"Bearer", b"Bearer    ", b"Basic dXNlcjpwYXNz", b"bearer\t", b"Token abc", b"\xff Bearer"]
)
async def test_a_malformed_bearer_answers_401_unauthorized(running: Running, authorization: bytes) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        ticket = (await join(http, running)).json()
    path = f"/v1/rooms/{ROOM}/tickets/{ticket['ticket_id']}"
    answer = await exchange(running.address(), request("GET", path, b"Authorization: " + authorization))
    assert (answer.status, answer.error()) == (401, "unauthorized"), answer.body


async def test_silent_and_half_sent_connections_are_closed_within_the_header_timeout(running: Running) -> None:
    half = b"GET /v1/rooms/hostile HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: "
    answers = await asyncio.gather(
        *(exchange(running.address(), b"") for _ in range(10)),
        *(exchange(running.address(), half) for _ in range(10)),
        *(exchange(running.address(admin=True), b"") for _ in range(5)),
    )
    for answer in answers:
        assert (answer.status, answer.error()) == (408, "request_timeout")
        assert answer.took_s < HEADER_TIMEOUT_S + 3, f"closed after {answer.took_s:.1f} s"


async def test_headers_over_the_maximum_answer_431(running: Running) -> None:
    big = b"X-Big: " + b"a" * (MAX_HEADER_BYTES + 1000)
    answer = await exchange(running.address(), request("GET", f"/v1/rooms/{ROOM}", big))
    assert (answer.status, answer.error()) == (431, "headers_too_large")


async def test_a_body_over_the_maximum_answers_413_before_it_is_sent_whole(running: Running) -> None:
    # Content-Length says 10 MB; only the headers and 1 KB are sent: the answer cannot wait for the rest.
    head = request("POST", f"/v1/rooms/{ROOM}/tickets", b"Content-Type: application/json", b"Content-Length: 10000000")
    answer = await exchange(running.address(), head + b"{" * 1024)
    assert (answer.status, answer.error()) == (413, "body_too_large")
    admin_head = request(
        "PUT",
        f"/v1/admin/rooms/{ROOM}",
        b"Authorization: Bearer " + ADMIN_TOKEN.encode(),
        b"Content-Type: application/json",
        b"Content-Length: 10000000",
    )
    answer = await exchange(running.address(admin=True), admin_head + b"{" * 1024)
    assert (answer.status, answer.error()) == (413, "body_too_large")


async def test_malformed_json_without_the_admin_token_answers_401_and_with_a_wrong_one_403(running: Running) -> None:
    junk = b'{"capacity": [[[[' * 100
    body_headers = (b"Content-Type: application/json",)
    anonymous = await exchange(
        running.address(admin=True), request("PUT", f"/v1/admin/rooms/{ROOM}", *body_headers, body=junk)
    )
    assert (anonymous.status, anonymous.error()) == (401, "unauthorized")
    wrong = await exchange(
        running.address(admin=True),
        request("PUT", f"/v1/admin/rooms/{ROOM}", b"Authorization: Bearer nope", *body_headers, body=junk),
    )
    assert (wrong.status, wrong.error()) == (403, "forbidden")


async def test_a_trailing_slash_with_a_foreign_host_is_not_redirected(running: Running) -> None:
    raw = f"GET /v1/rooms/{ROOM}/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".encode()
    answer = await exchange(running.address(), raw)
    assert answer.status == 404 and "location" not in answer.headers, answer.headers
    assert answer.error() == "not_found"
    assert b"evil.example" not in answer.body


@pytest.mark.parametrize("config", [{"target_url": "http://["}, {"heartbeat_interval_s": 5e-324}])
async def test_an_invalid_room_configuration_answers_422_with_a_code(running: Running, config: dict[str, Any]) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.put(
            f"{running.svc.admin_url}/v1/admin/rooms/{ROOM}", json=config, headers=admin_headers()
        )
    assert response.status_code == 422, response.text
    assert response.json()["error"] in ("invalid_request", "invalid_config")
    assert isinstance(response.json()["detail"], str)


@pytest.mark.parametrize("key", ["abcdefgh", "a" * 16, "0123456789abcdef" + "é"])
async def test_a_short_or_guessable_idempotency_key_answers_422(running: Running, key: str) -> None:
    answer = await exchange(
        running.address(), request("POST", f"/v1/rooms/{ROOM}/tickets", b"Idempotency-Key: " + key.encode())
    )
    assert answer.status == 422, answer.body
    assert answer.error() in ("invalid_request", "invalid_idempotency_key")
    assert b"ticket_token" not in answer.body


async def test_a_replay_of_an_idempotency_key_after_its_ticket_ended_answers_410_without_a_token(
    running: Running,
) -> None:
    key = str(uuid.uuid4())
    async with httpx.AsyncClient(timeout=30) as http:
        first = await join(http, running, **{"Idempotency-Key": key})
        assert first.status_code == 201, first.text
        ticket = first.json()
        again = await join(http, running, **{"Idempotency-Key": key})
        assert (again.status_code, again.json()["ticket_id"]) == (200, ticket["ticket_id"])
        path = f"{running.svc.url}/v1/rooms/{ROOM}/tickets/{ticket['ticket_id']}"
        assert (await http.delete(path, headers=bearer(ticket["ticket_token"]))).status_code == 204
        replay = await join(http, running, **{"Idempotency-Key": key})
    assert (replay.status_code, replay.json()["error"]) == (410, "ticket_left")
    assert "ticket_token" not in replay.text


async def test_a_heartbeat_flood_of_one_ticket_writes_no_record_per_request(running: Running) -> None:
    # A room with a long interval: at most one record per half interval (15 s) is allowed, whatever
    # the flood's speed on a busy machine.
    interval = 30.0
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(
            http, running.svc.admin_url, "flood", capacity=1, heartbeat_interval_s=interval, heartbeat_timeout_s=90.0
        )
        ticket = (await http.post(f"{running.svc.url}/v1/rooms/flood/tickets")).json()
        url = f"{running.svc.url}/v1/rooms/flood/tickets/{ticket['ticket_id']}/heartbeat"
        started = time.monotonic()
        codes = [(await http.post(url, headers=bearer(ticket["ticket_token"]))).status_code for _ in range(200)]
        took = time.monotonic() - started
    assert set(codes) <= {200, 429}, sorted(set(codes))
    records = [
        m
        for m in await read_topic(running.bootstrap, running.topics.heartbeats.name)
        if (isinstance(m, Heartbeat) and m.ticket_id == ticket["ticket_id"])
        or (isinstance(m, HeartbeatBatch) and ticket["ticket_id"] in m.ticket_ids)
    ]
    allowed = 2 + int(took / (interval / 2))
    assert len(records) <= allowed, f"{len(records)} heartbeat records for 200 heartbeats of one ticket in {took:.1f} s"


async def test_connections_beyond_the_maximum_answer_503_with_retry_after(running: Running) -> None:
    held = [await asyncio.open_connection(*running.address()) for _ in range(MAX_CONNECTIONS)]
    try:
        await asyncio.sleep(0.2)  # all accepted, well within the header timeout that would close them
        answer = await exchange(running.address(), b"", timeout=HEADER_TIMEOUT_S)
    finally:
        for _, writer in held:
            writer.close()
    assert (answer.status, answer.error()) == (503, "overloaded")
    assert answer.headers.get("retry-after") == "1"


async def test_head_on_a_get_route_answers_200_without_a_body(running: Running) -> None:
    for path in (f"/v1/rooms/{ROOM}", "/.well-known/jwks.json"):
        answer = await exchange(running.address(), request("HEAD", path))
        assert answer.status == 200, (path, answer.headers)
        assert answer.body == b"", path
        assert answer.headers["content-type"].startswith("application/json")


async def test_afterwards_the_api_still_serves_and_its_log_has_no_traceback(running: Running) -> None:
    """Last in this file: runs after every hostile input above (alone, it still checks a fresh process)."""
    async with httpx.AsyncClient(timeout=30) as http:
        joined = await join(http, running)
        assert joined.status_code == 201, joined.text
        ticket = joined.json()
        path = f"{running.svc.url}/v1/rooms/{ROOM}/tickets/{ticket['ticket_id']}"
        status = await http.get(path, headers=bearer(ticket["ticket_token"]))
        heartbeat = await http.post(f"{path}/heartbeat", headers=bearer(ticket["ticket_token"]))
        room = await http.get(f"{running.svc.url}/v1/rooms/{ROOM}")
    assert status.status_code == 200 and status.json()["queue_no"] == ticket["queue_no"]
    assert heartbeat.status_code == 200 and heartbeat.json()["state"] in ("waiting", "admitted")
    assert room.status_code == 200 and room.json()["last_queue_no"] >= ticket["queue_no"]
    assert running.svc.alive()
    log = await asyncio.to_thread(Path(running.svc.log_path).read_text, errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
    assert '"status": 500' not in log and '"status_code": 500' not in log
