"""A client looping on one ticket's heartbeat costs the log almost nothing: a heartbeat sooner
than half the interval after an acknowledged one is answered from memory, without a record."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from support.http import bearer, create_room
from support.kafka_log import read_topic

from waitroom_events.heartbeats import Heartbeat, HeartbeatBatch
from waitroom_events.topics import TopicRegistry

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_200_heartbeats_of_one_ticket_in_a_burst_are_all_answered_and_write_at_most_a_few_records(
    topics: TopicRegistry, launch_ticketing: Any, kafka_bootstrap: str
) -> None:
    (svc,) = launch_ticketing(topics)
    async with httpx.AsyncClient(timeout=30) as http:
        await create_room(http, svc.admin_url, "flood", capacity=1, heartbeat_interval_s=5.0)
        joined = (await http.post(f"{svc.url}/v1/rooms/flood/tickets")).json()
        url = f"{svc.url}/v1/rooms/flood/tickets/{joined['ticket_id']}/heartbeat"
        codes = [(await http.post(url, headers=bearer(joined["ticket_token"]))).status_code for _ in range(200)]

    assert codes == [200] * 200
    records = [
        m
        for m in await read_topic(kafka_bootstrap, topics.heartbeats.name)
        if (isinstance(m, Heartbeat) and m.ticket_id == joined["ticket_id"])
        or (isinstance(m, HeartbeatBatch) and joined["ticket_id"] in m.ticket_ids)
    ]
    assert 1 <= len(records) <= 3, f"{len(records)} heartbeat records for one ticket's burst"
