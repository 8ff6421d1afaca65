"""The AWS Virtual Waiting Room facade as AWS's own clients drive it: ticketing and the reaper as
processes against a real broker, over HTTP.

The client flow is the one AWS's sample site and load test run (assign_queue_num -> poll queue_num
-> poll serving_num -> generate_token -> verify against public_key -> regenerate); the serving
counter is moved by an inlet calling the private increment_serving_counter on the admin listener.
Rooms use a short heartbeat timeout, and clients wait longer than it: AWS clients never heartbeat,
so every ticket still alive at the end was kept by the facade.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from e2e.conftest import Processes, TicketingLauncher, service_env
from support.http import admin_headers, create_room
from support.kafka_log import read_topic
from support.waiting import eventually

from waitroom_devtools.procs import ServiceProcess, free_port
from waitroom_events.events import TicketAdmitted, TicketExpired, TicketIssued
from waitroom_events.topics import TopicRegistry
from waitroom_ticketing.tokens import write_private_key

pytestmark = pytest.mark.asyncio(loop_scope="session")

CLIENTS = 200
INLET_STEP = 25
TIMEOUT_S = 5.0


def start_reaper(processes: Processes, kafka_bootstrap: str, topics: TopicRegistry) -> ServiceProcess:
    port = free_port()
    env = service_env(kafka_bootstrap, topics, WAITROOM_REAPER_HEALTH_PORT=str(port))
    reaper = processes.start("reaper", "waitroom_reaper", env, f"http://127.0.0.1:{port}/readyz")
    reaper.wait_ready(90)
    return reaper


def facade_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    key = tmp_path / "aws-vwr-key.pem"
    if not key.exists():
        write_private_key(key, "RS256")
    return {"WAITROOM_TICKETING_AWS_VWR_ENABLED": "true", "WAITROOM_TICKETING_AWS_VWR_KEY_FILE": str(key), **extra}


async def _until_200(call: Any, *, every_s: float, timeout_s: float = 120) -> httpx.Response:
    """What the sample site's axios-retry does: call again until the answer is 200."""
    deadline = time.monotonic() + timeout_s
    while True:
        response: httpx.Response = await call()
        if response.status_code == 200:
            return response
        assert response.status_code == 202, response.text
        assert time.monotonic() < deadline, f"still {response.status_code}: {response.text}"
        await asyncio.sleep(every_s)


class Client:
    """One AWS VWR client: what it was given and when."""

    def __init__(self, http: httpx.AsyncClient, api: str, event_id: str) -> None:
        self.http = http
        self.api = api
        self.event_id = event_id
        self.request_id = ""
        self.queue_number = 0
        self.early_token: httpx.Response | None = None
        self.tokens: dict[str, Any] = {}
        self.again: dict[str, Any] = {}
        self.jwk: dict[str, Any] = {}
        self.seen_serving = 0

    async def run(self, numbered: asyncio.Event, count: list[int]) -> None:
        assigned = await _until_200(
            lambda: self.http.post(f"{self.api}/assign_queue_num", json={"event_id": self.event_id}), every_s=0.2
        )
        self.request_id = assigned.json()["api_request_id"]
        ids = {"event_id": self.event_id, "request_id": self.request_id}
        position = await _until_200(lambda: self.http.get(f"{self.api}/queue_num", params=ids), every_s=0.2)
        self.queue_number = int(position.json()["queue_number"])
        self.early_token = await self.http.post(f"{self.api}/generate_token", json=ids)
        count[0] += 1
        if count[0] == CLIENTS:
            numbered.set()
        while self.seen_serving < self.queue_number:
            serving = await self.http.get(f"{self.api}/serving_num", params={"event_id": self.event_id})
            assert serving.status_code == 200, serving.text
            self.seen_serving = int(serving.json()["serving_counter"])
            if self.seen_serving < self.queue_number:
                await asyncio.sleep(2.0)  # the sample site polls every 3 s
        token = await _until_200(lambda: self.http.post(f"{self.api}/generate_token", json=ids), every_s=0.5)
        self.tokens = token.json()
        self.jwk = (await self.http.get(f"{self.api}/public_key", params={"event_id": self.event_id})).json()
        self.again = (await self.http.post(f"{self.api}/generate_token", json=ids)).json()


async def test_200_aws_clients_get_verifiable_tokens_in_queue_order_as_an_inlet_raises_the_serving_counter(
    topics: TopicRegistry,
    launch_ticketing: TicketingLauncher,
    processes: Processes,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    start_reaper(processes, kafka_bootstrap, topics)
    (svc,) = launch_ticketing(topics, **facade_env(tmp_path))
    api, private = f"{svc.url}/aws-vwr", f"{svc.admin_url}/aws-vwr"
    serving_after: list[int] = []
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as http:
        # capacity 0: only the serving counter lets anyone in, as in AWS's model
        await create_room(
            http, svc.admin_url, "launch", capacity=0, heartbeat_timeout_s=TIMEOUT_S, heartbeat_interval_s=1
        )
        clients = [Client(http, api, "launch") for _ in range(CLIENTS)]
        numbered, count = asyncio.Event(), [0]

        async def inlet() -> None:
            await numbered.wait()
            # Everyone now waits for longer than the heartbeat timeout, never heartbeating.
            await asyncio.sleep(TIMEOUT_S + 3)
            while not serving_after or serving_after[-1] < CLIENTS:
                body = {"event_id": "launch", "increment_by": INLET_STEP}
                moved = await http.post(f"{private}/increment_serving_counter", json=body, headers=admin_headers())
                assert moved.status_code == 200, moved.text
                serving_after.append(moved.json()["serving_num"])
                await asyncio.sleep(0.5)

        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(inlet(), *(c.run(numbered, count) for c in clients)), 180)
        elapsed = time.monotonic() - started
        active = await http.get(f"{private}/num_active_tokens", params={"event_id": "launch"}, headers=admin_headers())
        waiting = await http.get(f"{api}/waiting_num", params={"event_id": "launch"})

    print(f"{CLIENTS} AWS clients through the facade in {elapsed:.1f} s")  # noqa: T201 - the figure, with -s
    assert sorted(c.queue_number for c in clients) == list(range(1, CLIENTS + 1))
    assert serving_after == list(range(INLET_STEP, CLIENTS + 1, INLET_STEP))  # each call moved the counter
    assert active.json() == {"active_tokens": CLIENTS}
    assert waiting.json() == {"waiting_num": 0}
    issuer = f"{svc.url}/aws-vwr"
    for client in clients:
        assert client.early_token is not None and client.early_token.status_code == 202
        assert client.early_token.json() == {"error": "Request ID not being served yet"}
        assert client.tokens["token_type"] == "Bearer" and 3600 - 60 <= client.tokens["expires_in"] <= 3600
        key = jwt.PyJWK(client.jwk).key
        for use in ("access", "refresh", "id"):
            token = client.tokens[f"{use}_token"]
            assert jwt.get_unverified_header(token)["kid"] == client.jwk["kid"]
            claims = jwt.decode(token, key, algorithms=["RS256"], audience="launch", issuer=issuer)
            assert claims["sub"] == client.request_id and claims["queue_position"] == client.queue_number
            assert claims["token_use"] == use and claims["exp"] - claims["iat"] == 3600
            assert claims["nbf"] == claims["iat"]
        assert client.again == client.tokens | {"expires_in": client.again["expires_in"]}

    # Served in queue order: every admission of the room is in queue_no order, and none of the
    # tickets, silent for longer than the heartbeat timeout, was expired.
    events = [e for e in await read_topic(kafka_bootstrap, topics.room_events.name) if e.room_id == "launch"]
    admitted = [e.queue_no for e in events if isinstance(e, TicketAdmitted)]
    assert admitted == list(range(1, CLIENTS + 1))
    assert not [e for e in events if isinstance(e, TicketExpired)]
    by_number = sorted(clients, key=lambda c: c.queue_number)
    issued_at = [jwt.decode(c.tokens["access_token"], options={"verify_signature": False})["iat"] for c in by_number]
    assert issued_at == sorted(issued_at)
    issued = {e.ticket_id: e.at for e in events if isinstance(e, TicketIssued)}
    first_admission = min(e.at for e in events if isinstance(e, TicketAdmitted))
    assert first_admission - max(issued.values()) > TIMEOUT_S + 1  # they all did wait that long


async def test_unclaimed_positions_lapse_sessions_end_at_their_validity_or_update_session_and_bad_input_gets_aws_errors(
    topics: TopicRegistry,
    launch_ticketing: TicketingLauncher,
    processes: Processes,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    start_reaper(processes, kafka_bootstrap, topics)
    env = facade_env(
        tmp_path,
        WAITROOM_TICKETING_AWS_VWR_QUEUE_POSITION_EXPIRY_PERIOD="2",
        WAITROOM_TICKETING_AWS_VWR_VALIDITY_PERIOD="6",
        WAITROOM_TICKETING_AWS_VWR_PREFIX="/prod",
    )
    (svc,) = launch_ticketing(topics, **env)
    api, private, auth = f"{svc.url}/prod", f"{svc.admin_url}/prod", admin_headers()
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(http, svc.admin_url, "evt", capacity=0, heartbeat_timeout_s=4, heartbeat_interval_s=1)

        async def assign() -> dict[str, str]:
            response = await http.post(f"{api}/assign_queue_num", json={"event_id": "evt"})
            ids = {"event_id": "evt", "request_id": response.json()["api_request_id"]}
            await _until_200(lambda: http.get(f"{api}/queue_num", params=ids), every_s=0.1)
            return ids

        async def serve(n: int) -> int:
            body = {"event_id": "evt", "increment_by": n}
            moved = await http.post(f"{private}/increment_serving_counter", json=body, headers=auth)
            serving: int = moved.json()["serving_num"]
            return serving

        claimer, idler, ender = await assign(), await assign(), await assign()
        assert await serve(3) == 3
        claimed = (await http.post(f"{api}/generate_token", json=claimer)).json()
        assert claimed["expires_in"] in (5, 6)
        assert (await http.post(f"{api}/generate_token", json=ender)).status_code == 200
        left = await http.get(f"{api}/queue_pos_expiry", params=idler)
        assert left.status_code == 200 and 1 <= left.json()["expires_in"] <= 2

        # update_session ends a session at once; its tokens are refused from then on
        session = {**ender, "status": -1}
        assert (await http.post(f"{private}/update_session", json=session, headers=auth)).status_code == 200
        ended = await http.post(f"{api}/generate_token", json=ender)
        assert (ended.status_code, ended.json()) == (410, {"error": "Token corresponding to request id has expired"})

        # the unclaimed position lapses after QueuePositionExpiryPeriod: watched through queue_pos_expiry
        # (a generate_token within the period would claim it)
        async def lapsed() -> bool:
            return (await http.get(f"{api}/queue_pos_expiry", params=idler)).status_code == 410

        await eventually(lapsed, 20, "the unclaimed position to lapse")
        late = await http.post(f"{api}/generate_token", json=idler)
        assert (late.status_code, late.json()) == (410, {"error": "Queue position has expired"})

        # the claimed session ends at its exp: the same tokens come back with expires_in 0
        async def listed() -> Any:
            response = await http.get(f"{private}/expired_tokens", params={"event_id": "evt"}, headers=auth)
            return claimer["request_id"] in response.json()

        await eventually(listed, 20, "the claimed session's tokens to expire")

        async def room_empty() -> bool:
            room = await http.get(f"{svc.admin_url}/v1/admin/rooms/evt", headers=auth)
            return bool(room.json()["active"] == 0)

        await eventually(room_empty, 20, "the reaper to end the claimed session")
        after = await http.post(f"{api}/generate_token", json=claimer)
        assert after.json() == claimed | {"expires_in": 0}
        expired = await http.post(f"{api}/generate_token", json=idler)  # its ticket too has ended by now
        assert (expired.status_code, expired.json()) == (410, {"error": "Queue position has expired"})
        active = await http.get(f"{private}/num_active_tokens", params={"event_id": "evt"}, headers=auth)
        assert active.json() == {"active_tokens": 0}

        # bad input: AWS's statuses and bodies; private calls only on the admin listener, with the token
        unknown = await http.get(f"{api}/serving_num", params={"event_id": "no-such-room"})
        assert (unknown.status_code, unknown.json()) == (400, {"error": "Invalid event ID"})
        missing = await http.get(f"{api}/queue_num", params={"event_id": "evt"})
        assert missing.status_code == 400 and "request_id" in missing.json()["message"]
        broken = await http.post(f"{api}/generate_token", content=b"[]", headers={"Content-Type": "application/json"})
        assert (broken.status_code, broken.json()) == (400, {"message": "Invalid request body"})
        body = {"event_id": "evt", "increment_by": 1}
        assert (await http.post(f"{api}/increment_serving_counter", json=body)).status_code == 404
        assert (await http.post(f"{private}/increment_serving_counter", json=body)).status_code == 401
        assert (await http.get(f"{svc.url}/aws-vwr/serving_num", params={"event_id": "evt"})).status_code == 404
