"""The OpenAPI documents are the contract: schemathesis generates requests from each listener's own
document and checks every answer (no server error, a status the document declares, a body of the
declared schema, the declared content type). Over 1000 cases across both apps.

The apps run in-process over the same fakes as tests/unit/test_api.py (an in-memory sequencer
behind the publisher); a room exists, so generated calls reach 200s as well as errors.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from waitroom_core.room import RoomState, apply_all, decide
from waitroom_events.base import Message
from waitroom_events.codec import decode, encode
from waitroom_events.heartbeats import Heartbeat, HeartbeatBatch
from waitroom_events.topics import topic_registry
from waitroom_platform.settings import KafkaSettings
from waitroom_ticketing.api import Services, create_admin_app, create_public_app
from waitroom_ticketing.ratelimit import RateLimiter
from waitroom_ticketing.read_model import ReadModel
from waitroom_ticketing.tokens import EntryTokenSigner, TicketTokens

ADMIN_TOKEN = "admin-token-for-contract-tests"
CHECKS = (not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance)
CASES_PER_OPERATION = 150
#: cases run by the two tests above, per listener (checked by the last test of the module)
RAN: dict[str, int] = {"public": 0, "admin": 0}


class InstantLog:
    """Sequences each command at once into the read model, through the codec."""

    def __init__(self, read_model: ReadModel) -> None:
        self.read_model = read_model
        self.rooms: dict[str, RoomState] = {}

    async def publish(self, topic: str, message: Message, **_: Any) -> None:
        if isinstance(message, Heartbeat | HeartbeatBatch):
            return
        room = self.rooms.setdefault(message.room_id, RoomState(message.room_id))
        events = decide(room, message, time.time())  # type: ignore[arg-type]
        apply_all(room, events)
        self.read_model.apply([decode(e.value, e.headers) for e in map(encode, events)])  # type: ignore[misc]


class NoStats:
    """A stats view that has seen no snapshot yet (the real one follows room-stats on Kafka)."""

    def seconds_per_admission(self, room_id: str) -> float | None:
        return None

    def describe(self, room_id: str) -> dict[str, Any]:
        return {"room_id": room_id, "snapshot": None}


def build_apps() -> tuple[Any, Any]:
    read_model = ReadModel(KafkaSettings(), topic_registry("contract", 1).room_events.name)
    read_model._tail.caught_up.set()
    services = Services(
        topics=topic_registry("contract", 1),
        publisher=InstantLog(read_model),  # type: ignore[arg-type]
        read_model=read_model,
        tickets=TicketTokens("contract-ticket-secret"),
        signer=EntryTokenSigner.ephemeral("waitroom", 60),
        admin_token=ADMIN_TOKEN,
        limiter=RateLimiter(0, 1),
        join_wait_s=0.2,
        publish_timeout_s=1.0,
        stats=NoStats(),  # type: ignore[arg-type]
    )
    public_app = create_public_app(services)
    admin_app = create_admin_app(services, public_openapi=public_app.openapi, docs=False)
    return public_app, admin_app


PUBLIC_APP, ADMIN_APP = build_apps()
public_schema = schemathesis.openapi.from_asgi("/openapi.json", PUBLIC_APP)
admin_schema = schemathesis.openapi.from_asgi("/openapi.json", ADMIN_APP)


@pytest.fixture(scope="module", autouse=True)
def a_room_exists() -> None:
    transport = httpx.ASGITransport(app=ADMIN_APP)

    async def create() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
            answer = await http.put(
                "/v1/admin/rooms/fuzz", json={"capacity": 2}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            assert answer.status_code in (200, 201), answer.text

    import asyncio

    asyncio.run(create())


CONTRACT_SETTINGS = settings(
    max_examples=CASES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


@public_schema.parametrize()
@CONTRACT_SETTINGS
def test_the_public_api_answers_as_its_openapi_document_says(case: Any) -> None:
    RAN["public"] += 1
    case.call_and_validate(checks=CHECKS)


@admin_schema.parametrize()
@CONTRACT_SETTINGS
def test_the_admin_api_answers_as_its_openapi_document_says(case: Any) -> None:
    RAN["admin"] += 1
    case.call_and_validate(checks=CHECKS, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


def test_over_1000_generated_cases_ran() -> None:
    if not all(RAN.values()):
        pytest.skip("the contract tests above were not selected in this run")
    assert sum(RAN.values()) >= 1000, RAN
