"""Every service answers /healthz, /readyz and Prometheus /metrics on its health port, and stops
promptly on SIGTERM with exit code 0 (what a kubelet's probes and a rolling update rely on)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from e2e.conftest import Processes, TicketingLauncher, moto_env, service_env
from prometheus_client.parser import text_string_to_metric_families
from support.http import create_room
from support.waiting import eventually

from waitroom_devtools.procs import ServiceProcess, free_port
from waitroom_events.topics import TopicRegistry

pytestmark = pytest.mark.asyncio(loop_scope="session")

NO_EXPORT = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
#: SIGTERM to exit: far below a kubelet's default 30 s grace period
STOP_WITHIN_S = 10.0


def metric_names(text: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


async def test_every_service_serves_health_readiness_and_prometheus_metrics_and_stops_on_sigterm(
    kafka_bootstrap: str,
    topics: TopicRegistry,
    launch_ticketing: TicketingLauncher,
    processes: Processes,
    tmp_path: Path,
) -> None:
    ports = {name: free_port() for name in ("ticketing", "reaper", "stats", "notifier")}
    moto, moto_url = processes.start_moto()
    reaper = processes.start(
        "reaper",
        "waitroom_reaper",
        service_env(kafka_bootstrap, topics, WAITROOM_REAPER_HEALTH_PORT=str(ports["reaper"]), **NO_EXPORT),
    )
    stats = processes.start(
        "stats",
        "waitroom_stats",
        service_env(
            kafka_bootstrap,
            topics,
            WAITROOM_STATS_HEALTH_PORT=str(ports["stats"]),
            WAITROOM_STATS_DATA_DIR=str(tmp_path / "stats-data"),
            **NO_EXPORT,
        ),
    )
    moto.wait_ready(60)
    notifier = processes.start(
        "notifier",
        "waitroom_notifier",
        service_env(
            kafka_bootstrap,
            topics,
            WAITROOM_NOTIFIER_HEALTH_PORT=str(ports["notifier"]),
            WAITROOM_NOTIFIER_SNS_TOPIC_NAME=f"alerts-{ports['notifier']}",
            WAITROOM_NOTIFIER_MANAGED_ALARMS="true",
            WAITROOM_NOTIFIER_ALARM_PREFIX=f"probed-{ports['notifier']}",
            **moto_env(moto_url),
            **NO_EXPORT,
        ),
    )
    [api] = launch_ticketing(topics, WAITROOM_TICKETING_HEALTH_PORT=str(ports["ticketing"]), **NO_EXPORT)
    services: dict[str, ServiceProcess] = {"ticketing": api, "reaper": reaper, "stats": stats, "notifier": notifier}

    async with httpx.AsyncClient(timeout=5) as http:
        await create_room(http, api.admin_url, "probed", capacity=2)
        assert (await http.post(f"{api.url}/v1/rooms/probed/tickets")).status_code == 201

        async def answers(name: str, path: str) -> httpx.Response | None:
            try:
                response = await http.get(f"http://127.0.0.1:{ports[name]}{path}")
            except httpx.TransportError:
                return None
            return response if response.status_code == 200 else None

        for name, proc in services.items():
            assert proc.alive(), proc.log_tail()
            await eventually(lambda n=name: answers(n, "/readyz"), 90, f"{name} ready", interval=0.2)  # type: ignore[misc]
            healthz = await http.get(f"http://127.0.0.1:{ports[name]}/healthz")
            assert healthz.status_code == 200 and healthz.json() == {"status": "ok"}, name
            metrics = await http.get(f"http://127.0.0.1:{ports[name]}/metrics")
            assert metrics.status_code == 200, name
            assert metrics.headers["content-type"].startswith("text/plain"), name
            names = metric_names(metrics.text)
            assert "process_resident_memory_bytes" in names, (name, sorted(names)[:20])

        # Each service's own numbers are there too: the queue depth the API reads off its read model
        # (OpenTelemetry gauges through the Prometheus reader), the reaper's counters.
        async def room_gauge() -> bool:
            response = await answers("ticketing", "/metrics")
            if response is None:
                return False
            samples = [s for family in text_string_to_metric_families(response.text) for s in family.samples]
            return any(
                s.name == "waitroom_room_waiting" and s.labels.get("waitroom_room_id") == "probed" for s in samples
            )

        await eventually(room_gauge, 30, "the room's waiting gauge on ticketing's /metrics", interval=0.5)
        reaper_metrics = metric_names((await http.get(f"http://127.0.0.1:{ports['reaper']}/metrics")).text)
        assert {"waitroom_reaper_live_tickets", "waitroom_reaper_heartbeats"} <= reaper_metrics
        notifier_metrics = metric_names((await http.get(f"http://127.0.0.1:{ports['notifier']}/metrics")).text)
        assert {"waitroom_notifier_alerts_published", "waitroom_notifier_metric_datums_put"} <= notifier_metrics

    for name, proc in services.items():
        started = time.monotonic()
        code = proc.stop(timeout=30)
        took = time.monotonic() - started
        assert code == 0, f"{name} exited with {code}:\n{proc.log_tail()}"
        assert took < STOP_WITHIN_S, f"{name} took {took:.1f} s to stop"
