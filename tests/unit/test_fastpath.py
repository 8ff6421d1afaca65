"""The visitors' fast path (``fastpath.py``) against the FastAPI routes it stands in front of.

``test_api.py`` runs every API test on both. Here the two answer the same requests side by side,
compared to the byte where the answer does not carry a fresh ticket: status, header names in
order, error bodies; and the fast path is seen to answer the plain joins, statuses and heartbeats
itself and to hand every other request to the app.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from unit.test_api import FakeLog, unit_services

from waitroom_events.commands import RoomConfigureRequested
from waitroom_events.topics import topic_registry
from waitroom_ticketing.api import create_public_app
from waitroom_ticketing.fastpath import VisitorFastPath
from waitroom_ticketing.ratelimit import RateLimiter

TOPICS = topic_registry("fastpath", 3)
LIMIT = 4096


class Side:
    """One public app with its own fake log: served plain, or behind the fast path."""

    def __init__(self, fast: bool) -> None:
        self.services = unit_services(TOPICS, join_wait_s=0.1)
        self.read_model = self.services.read_model
        self.log: FakeLog = self.services.publisher  # type: ignore[assignment]
        app = create_public_app(self.services, max_body_bytes=LIMIT)
        self.fast = VisitorFastPath(app, self.services, max_body_bytes=LIMIT) if fast else None
        transport = httpx.ASGITransport(app=self.fast or app, raise_app_exceptions=False)
        self.http = httpx.AsyncClient(transport=transport, base_url="http://api")

    async def room(self, room_id: str, capacity: int) -> None:
        await self.log.publish("commands", RoomConfigureRequested(room_id=room_id, requested_at=0.0, capacity=capacity))


@pytest.fixture
async def sides() -> Any:
    plain, fast = Side(fast=False), Side(fast=True)
    for side in (plain, fast):
        await side.room("r1", 1)
    yield plain, fast
    for side in (plain, fast):
        await side.http.aclose()


async def both(sides: tuple[Side, Side], path: str, **kwargs: Any) -> tuple[httpx.Response, httpx.Response]:
    plain, fast = sides
    return await plain.http.post(path, **kwargs), await fast.http.post(path, **kwargs)


def same_shape(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code
    assert [name for name, _ in a.headers.raw] == [name for name, _ in b.headers.raw]
    assert a.headers["content-type"] == b.headers["content-type"] == "application/json"
    assert sorted(a.json()) == sorted(b.json())


async def test_a_join_is_answered_by_the_fast_path_as_the_route_answers_it(sides: Any) -> None:
    plain, fast = sides
    admitted = await both(sides, "/v1/rooms/r1/tickets")
    waiting = await both(sides, "/v1/rooms/r1/tickets")
    for a, b in (admitted, waiting):
        same_shape(a, b)
        assert a.status_code == 201
        assert b.headers["location"] == f"/v1/rooms/r1/tickets/{b.json()['ticket_id']}"
        assert int(b.headers["content-length"]) == len(b.content)
    assert (admitted[1].json()["state"], waiting[1].json()["state"]) == ("admitted", "waiting")
    assert fast.fast.answered == 2

    plain.log.hold = fast.log.hold = True  # not sequenced within the join wait: 202 pending
    pending = await both(sides, "/v1/rooms/r1/tickets")
    same_shape(*pending)
    assert pending[1].status_code == 202 and pending[1].json()["state"] == "pending"
    assert fast.fast.answered == 3


@pytest.mark.parametrize(
    ("case", "path", "status", "error"),
    [
        ("unknown room", "/v1/rooms/nowhere/tickets", 404, "room_not_found"),
        ("starting", "/v1/rooms/r1/tickets", 503, "starting"),
        ("log down", "/v1/rooms/r1/tickets", 503, "log_unavailable"),
        ("rate limited", "/v1/rooms/r1/tickets", 429, "rate_limited"),
        ("unexpected", "/v1/rooms/r1/tickets", 500, "internal_error"),
    ],
)
async def test_an_error_of_a_join_is_the_same_bytes_on_both(
    sides: Any, case: str, path: str, status: int, error: str
) -> None:
    for side in sides:
        if case == "starting":
            side.services.is_ready = lambda: False
        if case == "log down":
            side.log.down = True
        if case == "rate limited":
            side.services.limiter = RateLimiter(rate_per_s=0.001, burst=1)
            await side.http.post(path)
        if case == "unexpected":

            def broken(room_id: str) -> None:
                raise RuntimeError("a bug")

            side.read_model.room = broken  # type: ignore[method-assign]
    a, b = await both(sides, path)
    assert (a.status_code, a.json()["error"]) == (status, error)
    assert a.content == b.content
    assert a.headers.raw == b.headers.raw
    assert sides[1].fast.answered >= 1


@pytest.mark.parametrize(
    ("case", "path", "kwargs", "status"),
    [
        ("room id out of pattern", "/v1/rooms/no%20spaces/tickets", {}, 422),
        ("malformed Idempotency-Key", "/v1/rooms/r1/tickets", {"headers": {"Idempotency-Key": "short"}}, 422),
        ("body over the limit", "/v1/rooms/r1/tickets", {"content": b"x" * (LIMIT + 1)}, 413),
        ("ticket id out of pattern", "/v1/rooms/r1/tickets/x/heartbeat", {}, 422),
        ("trailing slash", "/v1/rooms/r1/tickets/", {}, 404),
    ],
)
async def test_what_the_fast_path_does_not_take_goes_to_the_app_unchanged(
    sides: Any, case: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    a, b = await both(sides, path, **kwargs)
    assert a.status_code == status, a.text
    assert a.content == b.content
    assert a.headers.raw == b.headers.raw
    assert sides[1].fast.answered == 0
    assert not [m for m in sides[1].log.published if type(m).__name__ == "JoinRequested"]


async def test_a_replayed_idempotency_key_gets_its_ticket_again_through_the_fast_path(sides: Any) -> None:
    plain, fast = sides
    key = {"Idempotency-Key": "3f1c9e2a-5b7d-4c8e-9a6f-0d2b4e6a8c1f"}
    first = await fast.http.post("/v1/rooms/r1/tickets", headers=key)
    again = await fast.http.post("/v1/rooms/r1/tickets", headers=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["ticket_id"] == first.json()["ticket_id"]
    assert again.json()["ticket_token"] == first.json()["ticket_token"]
    assert fast.fast.answered == 2


async def test_a_status_and_a_heartbeat_are_answered_by_the_fast_path_as_the_routes_answer_them(sides: Any) -> None:
    plain, fast = sides
    tickets = [(await side.http.post("/v1/rooms/r1/tickets")).json() for side in sides]
    answers = []
    for side, ticket in zip(sides, tickets, strict=True):
        path = f"/v1/rooms/r1/tickets/{ticket['ticket_id']}"
        auth = {"Authorization": f"Bearer {ticket['ticket_token']}"}
        answers.append(
            [
                await side.http.get(path, headers=auth),
                await side.http.post(path + "/heartbeat", headers=auth),
                await side.http.get(path),  # no token: 401
                await side.http.get(path, headers={"Authorization": "Bearer not-its-token"}),  # 404
                await side.http.post(path),  # not a route: the app's 405
                await side.http.get(path + "/heartbeat", headers=auth),  # the app's 405
            ]
        )
    for a, b in zip(*answers, strict=True):
        assert a.status_code == b.status_code
        assert [name for name, _ in a.headers.raw] == [name for name, _ in b.headers.raw]
    assert [r.status_code for r in answers[1]] == [200, 200, 401, 404, 405, 405]
    for a, b in zip(answers[0][2:], answers[1][2:], strict=True):
        assert a.content == b.content
    assert sorted(answers[0][0].json()) == sorted(answers[1][0].json())
    assert fast.fast.answered == 1 + 4  # the join, then status, heartbeat, 401 and 404; not the 405s
