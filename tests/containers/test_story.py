"""One room's story over the containers' HTTP: join -> admit -> silence -> expiry -> alert.

All four services run from the image, on the podman network with Kafka and moto. A visitor joins
and is admitted, a second one waits and heartbeats; the first goes silent, the reaper expires it
(its ticket answers 410 ``ticket_expired``), the second is admitted, and stats' expiry-ratio rule
fires an alert that the notifier publishes to moto's SNS topic; the notifier's alarms and the
room's CloudWatch metrics are there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import pytest
from support.http import bearer, create_room, ticket_status
from support.waiting import eventually

from containers.conftest import Moto, Stack

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: only the rule this story breaches: one ticket ended, and it expired (ratio 1 > 0.5)
EXPIRY_RULE_ONLY = {
    "waiting_above": None,
    "estimated_wait_above_s": None,
    "active_fraction_at_or_above": None,
    "stalled_after_s": None,
    "expiry_ratio_above": 0.5,
    "expiry_ratio_min_ended": 1,
}


async def test_a_silent_visitor_is_expired_the_next_one_admitted_and_the_alert_reaches_sns(
    stack: Stack, moto: Moto
) -> None:
    room = "story"
    sns_topic = f"alerts-{stack.prefix}"
    ticketing = stack.start("ticketing")
    stack.start("reaper")
    stack.start(
        "stats",
        WAITROOM_STATS_SNAPSHOT_INTERVAL_S="1",
        WAITROOM_STATS_DEFAULT_RULES=json.dumps(EXPIRY_RULE_ONLY),
    )
    stack.start(
        "notifier",
        WAITROOM_NOTIFIER_SNS_TOPIC_NAME=sns_topic,
        WAITROOM_NOTIFIER_MANAGED_ALARMS="true",
        WAITROOM_NOTIFIER_ALARM_PREFIX=stack.prefix,
    )
    await stack.ready()

    async with httpx.AsyncClient(timeout=10) as http:
        await create_room(http, ticketing.admin_url, room, capacity=1, heartbeat_timeout_s=5, heartbeat_interval_s=1)
        first = await http.post(f"{ticketing.url}/v1/rooms/{room}/tickets")
        second = await http.post(f"{ticketing.url}/v1/rooms/{room}/tickets")
        assert first.status_code == second.status_code == 201, (first.text, second.text)
        silent, patient = first.json(), second.json()
        assert silent["state"] == "admitted" and silent["entry_token"], silent
        assert patient["state"] == "waiting" and patient["position"] == 0, patient

        beats: list[int] = []

        async def keep_alive() -> None:
            url = f"{ticketing.url}/v1/rooms/{room}/tickets/{patient['ticket_id']}/heartbeat"
            while True:
                beats.append((await http.post(url, headers=bearer(patient["ticket_token"]))).status_code)
                await asyncio.sleep(1)

        heartbeats = asyncio.create_task(keep_alive())
        try:
            # Silence: the first visitor never heartbeats; its 5 s timeout passes and the reaper expires it.
            async def expired() -> httpx.Response | None:
                response = await ticket_status(http, ticketing.url, silent, silent["ticket_token"])
                return response if response.status_code == 410 else None

            gone = await eventually(expired, 45, "the silent ticket's 410")
            assert gone.json()["error"] == "ticket_expired", gone.text

            async def admitted() -> dict[str, Any] | None:
                body: dict[str, Any] = (
                    await ticket_status(http, ticketing.url, patient, patient["ticket_token"])
                ).json()
                return body if body.get("state") == "admitted" else None

            let_in = await eventually(admitted, 15, "the waiting visitor's admission")
            assert let_in["entry_token"], let_in
        finally:
            heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeats
        assert beats and set(beats) == {200}, beats  # the patient visitor was never expired

    async def breach() -> list[dict[str, Any]]:
        return [
            n
            for n in await moto.published(sns_topic)
            if n["attributes"].get("kind", {}).get("Value") == "breach"
            and n["attributes"].get("room_id", {}).get("Value") == room
        ]

    [alert] = await eventually(breach, 60, f"the expiry alert on SNS topic {sns_topic}")
    assert alert["subject"].startswith(f"[waitroom] ALARM: room {room}: expiry_ratio_high"), alert["subject"]
    assert alert["attributes"]["rule"]["Value"] == "expiry_ratio_high", alert["attributes"]
    event = json.loads(json.loads(alert["message"])["sqs"])  # MessageStructure=json: machines get the event
    assert (event["room_id"], event["kind"], event["rule"]) == (room, "breach", "expiry_ratio_high"), event
    assert event["value"] > event["threshold"] == 0.5, event

    # The notifier provisioned its alarms and forwarded the room's snapshots to CloudWatch.
    cloudwatch = moto.client("cloudwatch")
    alarms = cloudwatch.describe_alarms(AlarmNamePrefix=stack.prefix)["MetricAlarms"]
    assert alarms, "the notifier made no alarms"

    def room_metrics() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = cloudwatch.list_metrics(
            Namespace="Waitroom", Dimensions=[{"Name": "Room", "Value": room}]
        )["Metrics"]
        return found

    await eventually(room_metrics, 30, "the room's metrics in CloudWatch")
