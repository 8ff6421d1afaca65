"""The ticket API and the sequencer as processes, against a real Kafka broker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import pytest
from support.http import admin_headers, bearer, create_room, settle, ticket_status, wait_room_visible
from support.kafka_log import read_topic

from waitroom_events.events import TicketAdmitted, TicketIssued
from waitroom_events.heartbeats import Heartbeat
from waitroom_events.topics import TopicRegistry

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _join(http: httpx.AsyncClient, base: str, room_id: str, **headers: str) -> httpx.Response:
    return await http.post(f"{base}/v1/rooms/{room_id}/tickets", headers=headers)


async def test_500_concurrent_joins_through_two_processes_get_numbers_1_to_500_and_fifo_admission(
    topics: TopicRegistry, launch_ticketing: Any
) -> None:
    a, b = launch_ticketing(topics, n=2)
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await create_room(http, a.admin_url, "surge", capacity=5)
        await wait_room_visible(http, b.url, "surge")
        responses = await asyncio.gather(*(_join(http, (a, b)[i % 2].url, "surge") for i in range(500)))
        assert {r.status_code for r in responses} <= {201, 202}, [r.text for r in responses if r.status_code >= 300]
        joined = [r.json() for r in responses]
        final = await asyncio.gather(
            *(settle(http, (a, b)[i % 2].url, t, t["ticket_token"]) for i, t in enumerate(joined))
        )

    assert sorted(t["queue_no"] for t in final) == list(range(1, 501))
    assert len({t["ticket_id"] for t in final}) == 500
    by_no = {t["queue_no"]: t for t in final}
    assert {q for q, t in by_no.items() if t["state"] == "admitted"} == {1, 2, 3, 4, 5}
    for queue_no in range(6, 501):
        assert by_no[queue_no]["state"] == "waiting"
        assert by_no[queue_no]["position"] == queue_no - 6


async def test_a_sequencer_killed_mid_burst_loses_no_acknowledged_join_and_applies_none_twice(
    topics: TopicRegistry, launch_ticketing: Any, kafka_bootstrap: str
) -> None:
    a, b = launch_ticketing(topics, n=2)
    acked: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(http, a.admin_url, "crash", capacity=3)
        await wait_room_visible(http, b.url, "crash")

        async def joiner(base: str, count: int) -> None:
            for _ in range(count):
                try:
                    response = await _join(http, base, "crash")
                except httpx.HTTPError:
                    continue  # the process is down: not acknowledged
                if response.status_code in (201, 202):
                    body = response.json()
                    acked[body["ticket_id"]] = body

        async def crash_when_busy() -> None:
            while len(acked) < 60:
                await asyncio.sleep(0.01)
            a.kill()  # kill -9: no shutdown, no commit, open transaction left behind

        workers = [joiner(base, 60) for base in (a.url, b.url) for _ in range(4)]
        await asyncio.gather(crash_when_busy(), *workers)
        restarted = launch_ticketing.restart(a)
        await asyncio.gather(*(_join(http, restarted.url, "crash") for _ in range(20)))
        tickets = await asyncio.gather(*(settle(http, b.url, t, t["ticket_token"], timeout=60) for t in acked.values()))

    assert len(tickets) == len(acked) and len(acked) > 60
    events = await read_topic(kafka_bootstrap, topics.room_events.name)
    issued = [e for e in events if isinstance(e, TicketIssued) and e.room_id == "crash"]
    admitted = [e for e in events if isinstance(e, TicketAdmitted) and e.room_id == "crash"]
    issued_ids = [e.ticket_id for e in issued]
    assert len(issued_ids) == len(set(issued_ids)), "a join was applied twice"
    assert [e.queue_no for e in issued] == list(range(1, len(issued) + 1)), "queue numbers are not dense"
    assert set(acked) <= set(issued_ids), "an acknowledged join was lost"
    assert len({e.ticket_id for e in admitted}) == len(admitted) == 3


async def test_a_leave_admits_the_next_waiting_ticket_within_a_second_and_capacity_holds(
    topics: TopicRegistry, launch_ticketing: Any
) -> None:
    (svc,) = launch_ticketing(topics)
    over_capacity: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(http, svc.admin_url, "lobby", capacity=2)
        tickets = [(await _join(http, svc.url, "lobby")).json() for _ in range(6)]
        assert [t["state"] for t in tickets] == ["admitted", "admitted"] + ["waiting"] * 4
        sampling = True

        async def sample() -> None:
            while sampling:
                status = (await http.get(f"{svc.url}/v1/rooms/lobby")).json()
                if status["active"] > status["capacity"]:
                    over_capacity.append(status)
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        for leaving, nxt in ((0, 2), (1, 3), (2, 4)):
            started = time.monotonic()
            gone = await http.delete(
                f"{svc.url}/v1/rooms/lobby/tickets/{tickets[leaving]['ticket_id']}",
                headers=bearer(tickets[leaving]["ticket_token"]),
            )
            assert gone.status_code == 204
            while (await ticket_status(http, svc.url, tickets[nxt], tickets[nxt]["ticket_token"])).json()[
                "state"
            ] != "admitted":
                assert time.monotonic() - started < 1.0, "the next ticket was not admitted within a second"
                await asyncio.sleep(0.01)
        sampling = False
        await sampler
        left = await ticket_status(http, svc.url, tickets[0], tickets[0]["ticket_token"])
        assert left.status_code == 410 and left.json()["error"] == "ticket_left"
        waiting = (await ticket_status(http, svc.url, tickets[5], tickets[5]["ticket_token"])).json()
        assert waiting["state"] == "waiting" and waiting["position"] == 0
    assert over_capacity == []


async def test_tokens_idempotency_and_bad_input_get_clear_4xx_answers(
    topics: TopicRegistry, launch_ticketing: Any, kafka_bootstrap: str
) -> None:
    (svc,) = launch_ticketing(topics)
    base, admin = svc.url, svc.admin_url
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(http, admin, "gate", capacity=1)
        first = await _join(http, base, "gate", **{"Idempotency-Key": "retry-key-0001-7f3a9c"})
        replay = await _join(http, base, "gate", **{"Idempotency-Key": "retry-key-0001-7f3a9c"})
        assert first.status_code == 201 and replay.status_code == 200
        assert replay.json()["ticket_id"] == first.json()["ticket_id"]
        assert replay.json()["queue_no"] == first.json()["queue_no"] == 1
        assert replay.json()["ticket_token"] == first.json()["ticket_token"]
        other = (await _join(http, base, "gate")).json()
        mine = first.json()

        url = f"{base}/v1/rooms/gate/tickets/{mine['ticket_id']}"
        checks: list[tuple[str, httpx.Response, int, str]] = [
            ("no ticket token", await http.get(url), 401, "unauthorized"),
            (
                "another ticket's token",
                await http.get(url, headers=bearer(other["ticket_token"])),
                404,
                "ticket_not_found",
            ),
            (
                "heartbeat with another's token",
                await http.post(url + "/heartbeat", headers=bearer(other["ticket_token"])),
                404,
                "ticket_not_found",
            ),
            ("leave without token", await http.delete(url), 401, "unauthorized"),
            ("admin without token", await http.get(f"{admin}/v1/admin/rooms"), 401, "unauthorized"),
            (
                "admin wrong token",
                await http.get(f"{admin}/v1/admin/rooms", headers=admin_headers("nope")),
                403,
                "forbidden",
            ),
            (
                "admin PUT wrong token",
                await http.put(f"{admin}/v1/admin/rooms/x", json={"capacity": 1}, headers=admin_headers("nope")),
                403,
                "forbidden",
            ),
            ("unknown room", await _join(http, base, "no-such-room"), 404, "room_not_found"),
            ("malformed room id", await _join(http, base, "bad%20id!"), 422, "invalid_request"),
            (
                "malformed ticket id",
                await http.get(f"{base}/v1/rooms/gate/tickets/xyz", headers=bearer("t")),
                422,
                "invalid_request",
            ),
            (
                "malformed idempotency key",
                await _join(http, base, "gate", **{"Idempotency-Key": "x"}),
                422,
                "invalid_request",
            ),
        ]
        admin_url = f"{admin}/v1/admin/rooms/gate"
        for name, body in [
            ("negative capacity", {"capacity": -1}),
            ("capacity as string", {"capacity": "5"}),
            ("unknown field", {"capacity": 1, "colour": "red"}),
            ("interval above timeout", {"heartbeat_interval_s": 30}),
            ("target_url not http", {"target_url": "javascript:alert(1)"}),
        ]:
            code = "invalid_config" if name == "interval above timeout" else "invalid_request"
            checks.append((name, await http.put(admin_url, json=body, headers=admin_headers()), 422, code))
        checks.append(
            (
                "new room without capacity",
                await http.put(f"{admin}/v1/admin/rooms/fresh", json={"paused": True}, headers=admin_headers()),
                422,
                "invalid_config",
            )
        )
        checks.append(
            (
                "body not JSON",
                await http.put(
                    admin_url, content=b"{nope", headers={**admin_headers(), "content-type": "application/json"}
                ),
                422,
                "invalid_request",
            )
        )
        checks.append(
            (
                "admit zero",
                await http.post(admin_url + "/admit", json={"count": 0}, headers=admin_headers()),
                422,
                "invalid_request",
            )
        )
        for name, response, status, code in checks:
            assert response.status_code == status, (name, response.status_code, response.text)
            assert response.json()["error"] == code, (name, response.text)

        assert (await http.post(url + "/heartbeat", headers=bearer(mine["ticket_token"]))).status_code == 200
        assert (await http.delete(url, headers=bearer(mine["ticket_token"]))).status_code == 204
        assert (await http.delete(url, headers=bearer(mine["ticket_token"]))).status_code == 204  # idempotent
        deadline = time.monotonic() + 10
        while (await http.get(url, headers=bearer(mine["ticket_token"]))).status_code != 410:
            assert time.monotonic() < deadline, "the leave never reached the read model"
            await asyncio.sleep(0.02)
        late = await http.post(url + "/heartbeat", headers=bearer(mine["ticket_token"]))
        assert late.status_code == 410 and late.json()["error"] == "ticket_left"
    # Only the one accepted heartbeat reached the log; the refused one published nothing.
    beats = [m for m in await read_topic(kafka_bootstrap, topics.heartbeats.name) if isinstance(m, Heartbeat)]
    assert [b.ticket_id for b in beats] == [mine["ticket_id"]]


async def test_the_entry_token_verifies_against_the_served_jwks(topics: TopicRegistry, launch_ticketing: Any) -> None:
    (svc,) = launch_ticketing(topics)
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(http, svc.admin_url, "shop", capacity=1, target_url="https://shop.example/")
        admitted = (await _join(http, svc.url, "shop")).json()
        waiting = (await _join(http, svc.url, "shop")).json()
        beat = (
            await http.post(
                f"{svc.url}/v1/rooms/shop/tickets/{admitted['ticket_id']}/heartbeat",
                headers=bearer(admitted["ticket_token"]),
            )
        ).json()
    assert waiting["entry_token"] is None
    for token in (admitted["entry_token"], beat["entry_token"]):
        signing_key = jwt.PyJWKClient(f"{svc.url}/.well-known/jwks.json").get_signing_key_from_jwt(token)
        claims = jwt.decode(token, signing_key.key, algorithms=["RS256"], audience="shop")
        assert claims["sub"] == admitted["ticket_id"]
        assert claims["exp"] > time.time()
        assert jwt.get_unverified_header(token)["kid"] == "2026-11-01"
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(admitted["entry_token"], signing_key.key, algorithms=["RS256"], audience="another-room")
