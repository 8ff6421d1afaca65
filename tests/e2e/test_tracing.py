"""One visitor, followed across every service: join -> admission -> silence -> expiry -> alert.

Every service runs as a process exporting OTLP/HTTP to a receiver this test runs (in-process), the
notifier talks to a real moto server. The test then asks the receiver what arrived and checks that
the spans of ticketing (HTTP and sequencer), the reaper, stats and the notifier form one connected
story: the join's trace holds the admission, the reaper's expiry, the sequencer's TicketExpired and
stats folding it; the stats snapshot that saw the expiry links to that trace, and its trace holds
the threshold alert and the notifier's SNS Publish.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e.conftest import Processes, TicketingLauncher, moto_env, service_env
from support.http import admin_headers, create_room
from support.waiting import eventually

from waitroom_devtools.otlp_receiver import OtlpReceiver
from waitroom_devtools.procs import free_port
from waitroom_events.topics import TopicRegistry

pytestmark = pytest.mark.e2e

ROOM_ATTR = "waitroom.room_id"
TICKET_ATTR = "waitroom.ticket_id"
TYPE_ATTR = "waitroom.message_type"

#: only the rule this story breaches: one ticket ended, and it expired (ratio 1 > 0.5)
EXPIRY_RULE_ONLY = {
    "waiting_above": None,
    "estimated_wait_above_s": None,
    "active_fraction_at_or_above": None,
    "stalled_after_s": None,
    "expiry_ratio_above": 0.5,
    "expiry_ratio_min_ended": 1,
}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def otel_env(receiver: OtlpReceiver) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    }


def outline(spans: list[dict[str, Any]]) -> list[str]:
    """Spans as ``service: name [message type]`` in start order, for failure messages."""
    ordered = sorted(spans, key=lambda s: s["start_ns"])
    return [f"{s['service']}: {s['name']} [{s['attributes'].get(TYPE_ATTR, '')}]" for s in ordered]


def trace_of(spans: list[dict[str, Any]], trace_id: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["trace_id"] == trace_id]


def typed(spans: list[dict[str, Any]], message_type: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["attributes"].get(TYPE_ATTR) == message_type]


async def test_a_join_its_admission_expiry_and_the_resulting_alert_are_one_connected_trace_across_every_service(
    kafka_bootstrap: str,
    topics: TopicRegistry,
    launch_ticketing: TicketingLauncher,
    receiver: OtlpReceiver,
    processes: Processes,
    tmp_path: Path,
) -> None:
    otel = otel_env(receiver)
    room = f"traced-{int(time.time() * 1000) % 1_000_000}"

    moto, moto_url = processes.start_moto()
    reaper_port = free_port()
    reaper = processes.start(
        "reaper",
        "waitroom_reaper",
        service_env(kafka_bootstrap, topics, WAITROOM_REAPER_HEALTH_PORT=str(reaper_port), **otel),
        f"http://127.0.0.1:{reaper_port}/readyz",
    )
    stats = processes.start(
        "stats",
        "waitroom_stats",
        service_env(
            kafka_bootstrap,
            topics,
            WAITROOM_STATS_SNAPSHOT_INTERVAL_S="1",
            WAITROOM_STATS_DATA_DIR=str(tmp_path / "stats-data"),
            WAITROOM_STATS_DEFAULT_RULES=json.dumps(EXPIRY_RULE_ONLY),
            **otel,
        ),
    )
    moto.wait_ready(60)
    notifier = processes.start(
        "notifier",
        "waitroom_notifier",
        service_env(
            kafka_bootstrap,
            topics,
            WAITROOM_NOTIFIER_SNS_TOPIC_NAME=f"alerts-{room}",
            WAITROOM_NOTIFIER_MANAGED_ALARMS="true",
            WAITROOM_NOTIFIER_ALARM_PREFIX=room,
            **moto_env(moto_url),
            **otel,
        ),
    )
    [api] = launch_ticketing(topics, **otel)
    for proc in (reaper, stats, notifier):
        proc.wait_ready(90)

    async with httpx.AsyncClient(timeout=10) as http:
        await create_room(http, api.admin_url, room, capacity=1, heartbeat_timeout_s=3, heartbeat_interval_s=1)
        joined = await http.post(f"{api.url}/v1/rooms/{room}/tickets")
        assert joined.status_code == 201, joined.text
        ticket = joined.json()
        ticket_id = ticket["ticket_id"]
        assert ticket["state"] == "admitted"

        # Silence: no heartbeat. The reaper expires the ticket after its 3 s timeout.
        async def gone() -> bool:
            status = await http.get(
                f"{api.url}/v1/rooms/{room}/tickets/{ticket_id}",
                headers={"Authorization": f"Bearer {ticket['ticket_token']}"},
            )
            return status.status_code == 410

        deadline = time.monotonic() + 30
        while not await gone():
            assert time.monotonic() < deadline, "the silent ticket was never expired"
            await asyncio.sleep(0.2)
        assert (await http.get(f"{api.admin_url}/v1/admin/rooms/{room}", headers=admin_headers())).status_code == 200

    spans_of = receiver.store.find_spans

    # ---- the join's trace: HTTP -> JoinRequested -> sequencer -> issued/admitted -> reaper -> expired -> stats
    join_send = (
        await eventually(
            lambda: typed(spans_of(attributes={TICKET_ATTR: ticket_id}), "waitroom.join.requested.v1"), 30, "the join"
        )
    )[0]
    join_trace = join_send["trace_id"]

    def join_story() -> list[dict[str, Any]] | None:
        spans = trace_of(spans_of(), join_trace)
        expired = [s for s in typed(spans, "waitroom.ticket.expired.v1") if s["service"] == "waitroom-stats"]
        return spans if expired else None

    await eventually(
        join_story,
        60,
        "stats folding the TicketExpired in the join's trace",
        seen=lambda: outline(trace_of(spans_of(), join_trace)),
    )

    # ---- the alert: a stats snapshot linked to the join's trace; in its trace the alert and the SNS call.
    # Waited for before the join's trace is checked, so that every span of that trace has arrived too.
    def alert_story() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        linked = [
            s for s in spans_of(service="waitroom-stats") if any(link["trace_id"] == join_trace for link in s["links"])
        ]
        for snapshot in linked:
            spans = trace_of(spans_of(), snapshot["trace_id"])
            if any(s["service"] == "waitroom-notifier" and s["attributes"].get("rpc.service") == "SNS" for s in spans):
                return snapshot, spans
        return None

    snapshot, alert_spans = await eventually(
        alert_story,
        60,
        "the alert's SNS publish linked to the join",
        seen=lambda: outline([s for s in spans_of() if s["service"] in ("waitroom-stats", "waitroom-notifier")]),
    )
    assert snapshot["attributes"][ROOM_ATTR] == room
    breached = typed(alert_spans, "waitroom.alert.breached.v1")
    assert {s["service"] for s in breached} >= {"waitroom-stats", "waitroom-notifier"}
    assert all(s["attributes"][ROOM_ATTR] == room for s in breached)
    publish = next(s for s in alert_spans if s["attributes"].get("rpc.service") == "SNS")
    # botocore's SNS extension marks Publish as a messaging PRODUCER (older versions: CLIENT)
    assert publish["kind"] in ("PRODUCER", "CLIENT"), publish
    assert publish["attributes"].get("rpc.method") == "Publish", publish

    # Each process exports on its own schedule: the stats spans (and the alert) can be in before the
    # reaper's batch with its expiry span is. Wait for that span, then take the whole story.
    def reaper_expiry_in_story() -> list[dict[str, Any]] | None:
        spans = trace_of(spans_of(), join_trace)
        mine = [s for s in spans if s["service"] == "waitroom-reaper" and s["attributes"].get(TICKET_ATTR) == ticket_id]
        return spans if mine else None

    await eventually(
        reaper_expiry_in_story,
        30,
        "the reaper's expiry span in the join's trace",
        seen=lambda: outline(trace_of(spans_of(), join_trace)),
    )
    story = trace_of(spans_of(), join_trace)
    by_service: dict[str, list[dict[str, Any]]] = {}
    for span in story:
        by_service.setdefault(span["service"], []).append(span)
    assert {"waitroom-ticketing", "waitroom-reaper", "waitroom-stats"} <= set(by_service)

    http_span = next(s for s in by_service["waitroom-ticketing"] if s["kind"] == "SERVER")
    assert "/tickets" in http_span["name"]
    sequencer = [s for s in by_service["waitroom-ticketing"] if s["kind"] == "CONSUMER"]
    decided = {s["attributes"].get(TYPE_ATTR) for s in sequencer}
    assert {"waitroom.join.requested.v1", "waitroom.expire.requested.v1"} <= decided, decided
    # the all-in-one process hands its join to its own sequencer, not through waitroom.commands (ADR 0011)
    join_decision = [s for s in sequencer if s["attributes"].get(TYPE_ATTR) == "waitroom.join.requested.v1"]
    assert [s["attributes"].get("waitroom.handed_over") for s in join_decision] == [True], join_decision
    produced = {s["attributes"].get(TYPE_ATTR) for s in by_service["waitroom-ticketing"] if s["kind"] == "PRODUCER"}
    assert {"waitroom.ticket.issued.v1", "waitroom.ticket.admitted.v1", "waitroom.ticket.expired.v1"} <= produced

    reaper_expiry = [s for s in by_service["waitroom-reaper"] if s["attributes"].get(TICKET_ATTR) == ticket_id]
    assert reaper_expiry, by_service["waitroom-reaper"]

    # Every span of the story that is about a message names the room, and the ticket where it has one.
    for span in story:
        if TYPE_ATTR in span["attributes"]:
            assert span["attributes"][ROOM_ATTR] == room, span
    for message_type in (
        "waitroom.join.requested.v1",
        "waitroom.ticket.admitted.v1",
        "waitroom.expire.requested.v1",
        "waitroom.ticket.expired.v1",
    ):
        assert all(s["attributes"][TICKET_ATTR] == ticket_id for s in typed(story, message_type)), message_type

    # The parent chain holds: every span's parent is in the trace, up to the one HTTP root.
    ids = {s["span_id"] for s in story}
    roots = [s for s in story if s["parent_span_id"] is None]
    assert roots == [http_span]
    assert all(s["parent_span_id"] in ids for s in story if s is not http_span)

    # ---- and the metrics went the same way
    def metric(name: str, service: str) -> list[dict[str, Any]]:
        return receiver.store.find_points(name=name, service=service)

    await eventually(lambda: metric("waitroom.kafka.consumer.lag", "waitroom-ticketing"), 30, "sequencer lag")
    await eventually(
        lambda: [
            p for p in metric("waitroom.room.waiting", "waitroom-ticketing") if p["attributes"].get(ROOM_ATTR) == room
        ],
        30,
        "the room's queue depth",
    )
    await eventually(
        lambda: (
            metric("http.server.duration", "waitroom-ticketing")
            or metric("http.server.request.duration", "waitroom-ticketing")
        ),
        30,
        "HTTP request metrics",
    )
