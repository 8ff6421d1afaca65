"""The service runtime: ordered start and stop, the first failure ends the process, health follows."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, ClassVar

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from support.waiting import eventually

from waitroom_platform.health import HealthServer
from waitroom_platform.metrics import expose_numbers
from waitroom_platform.runtime import Component, ComponentEnded, Misconfigured, OwnLoop, Supervisor
from waitroom_platform.service import load_settings, renamed_settings


class Recording(Component):
    """A component that notes each lifecycle call in a shared journal."""

    def __init__(self, name: str, journal: list[str], *, fail_in_run: asyncio.Event | None = None) -> None:
        self.name = name
        self.journal = journal
        self.fail_in_run = fail_in_run
        self.is_ready = True
        self.drained = asyncio.Event()

    async def start(self) -> None:
        self.journal.append(f"start {self.name}")

    async def run(self) -> None:
        if self.fail_in_run is not None:
            await self.fail_in_run.wait()
            raise RuntimeError(f"{self.name} broke")
        await self.drained.wait()  # finishes on its own once drained, like an HTTP server

    async def drain(self) -> None:
        self.journal.append(f"drain {self.name}")
        self.drained.set()

    async def stop(self) -> None:
        self.journal.append(f"stop {self.name}")

    def ready(self) -> bool:
        return self.is_ready


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_components_start_in_order_and_stop_in_reverse_on_a_stop_request() -> None:
    journal: list[str] = []
    supervisor = Supervisor("svc", [Recording(n, journal) for n in ("a", "b", "c")])
    running = asyncio.create_task(supervisor.run(handle_signals=False))
    await eventually(lambda: supervisor.ready, 5, "the service ready")
    assert journal == ["start a", "start b", "start c"]

    supervisor.request_stop()
    assert await running == 0
    assert journal[3:] == ["drain c", "stop c", "drain b", "stop b", "drain a", "stop a"]


async def test_the_first_failure_stops_everything_and_exits_non_zero_naming_the_component() -> None:
    journal: list[str] = []
    broken = asyncio.Event()
    components = [Recording("a", journal), Recording("b", journal, fail_in_run=broken), Recording("c", journal)]
    supervisor = Supervisor("svc", components)
    running = asyncio.create_task(supervisor.run(handle_signals=False))
    await eventually(lambda: supervisor.ready, 5, "the service ready")

    broken.set()
    assert await running == 1
    failure = supervisor.failure
    assert failure is not None and failure[0] == "b" and "b broke" in str(failure[1])
    assert [e for e in journal if e.startswith("stop")] == ["stop c", "stop b", "stop a"]


async def test_a_run_that_returns_counts_as_a_failure() -> None:
    class Quits(Component):
        name = "quits"

        async def run(self) -> None:
            return

    supervisor = Supervisor("svc", [Quits()])
    assert await supervisor.run(handle_signals=False) == 1
    assert supervisor.failure is not None and isinstance(supervisor.failure[1], ComponentEnded)


async def test_a_failing_start_stops_the_components_started_before_it() -> None:
    journal: list[str] = []

    class BadStart(Recording):
        async def start(self) -> None:
            raise RuntimeError("no broker")

    supervisor = Supervisor("svc", [Recording("a", journal), BadStart("b", journal), Recording("c", journal)])
    assert await supervisor.run(handle_signals=False) == 1
    assert journal == ["start a", "stop b", "drain a", "stop a"]
    assert supervisor.failure is not None and supervisor.failure[0] == "b"


async def test_a_stop_request_interrupts_a_start_that_waits_forever() -> None:
    journal: list[str] = []

    class Waits(Recording):
        async def start(self) -> None:
            self.journal.append("waiting")
            await asyncio.Event().wait()

    supervisor = Supervisor("svc", [Recording("a", journal), Waits("b", journal)])
    running = asyncio.create_task(supervisor.run(handle_signals=False))
    await eventually(lambda: "waiting" in journal, 5, "the start to begin")
    supervisor.request_stop()
    assert await asyncio.wait_for(running, 5) == 0
    assert journal[-2:] == ["drain a", "stop a"]


async def test_liveness_flips_when_a_component_dies_and_readiness_follows_every_component() -> None:
    journal: list[str] = []
    broken = asyncio.Event()
    release_stop = asyncio.Event()

    class SlowStop(Recording):
        async def stop(self) -> None:
            await release_stop.wait()  # keeps the process in its stopping phase while we probe

    worker = Recording("worker", journal, fail_in_run=broken)
    worker.is_ready = False
    supervisor: Supervisor
    health = HealthServer("127.0.0.1", 0, alive=lambda: supervisor.alive, ready=lambda: supervisor.ready)
    supervisor = Supervisor("svc", [health, SlowStop("slow", journal), worker])
    running = asyncio.create_task(supervisor.run(handle_signals=False))
    await eventually(lambda: "start worker" in journal, 5, "every component started")

    assert (await http_get(health.port, "/healthz"))[0] == 200
    assert (await http_get(health.port, "/readyz"))[0] == 503  # the worker is not ready yet
    worker.is_ready = True
    assert (await http_get(health.port, "/readyz"))[0] == 200

    broken.set()
    await eventually(lambda: not supervisor.alive, 5, "the failure noticed")
    status, body = await http_get(health.port, "/healthz")
    assert status == 503 and "failed" in body
    assert (await http_get(health.port, "/readyz"))[0] == 503
    release_stop.set()
    assert await running == 1


async def test_metrics_are_prometheus_text_with_the_service_numbers() -> None:
    registry = CollectorRegistry()
    numbers = {"live_tickets": 3, "expiries_requested": 1}
    withdraw = expose_numbers("waitroom_reaper", lambda: numbers, "the reaper's counters", registry)
    health = HealthServer("127.0.0.1", 0, alive=lambda: True, ready=lambda: True, registry=registry)
    await health.start()
    try:
        status, body = await http_get(health.port, "/metrics")
        values = {s.name: s.value for family in text_string_to_metric_families(body) for s in family.samples}
        assert status == 200
        assert values == {"waitroom_reaper_live_tickets": 3.0, "waitroom_reaper_expiries_requested": 1.0}
        assert (await http_get(health.port, "/nope"))[0] == 404
    finally:
        withdraw()
        await health.stop()


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAITROOM_DEMO_")
    DEPRECATED_ENV: ClassVar[dict[str, str]] = {"WAITROOM_DEMO_PORT": "WAITROOM_DEMO_HEALTH_PORT"}
    health_port: int = Field(default=1)


def test_a_renamed_setting_still_works_under_its_old_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAITROOM_DEMO_PORT", "8123")
    settings, old = load_settings(_Settings, "demo")
    assert settings.health_port == 8123
    assert old == {"WAITROOM_DEMO_PORT": "WAITROOM_DEMO_HEALTH_PORT"}


def test_the_new_name_wins_over_the_old_one() -> None:
    environ: dict[str, Any] = {"WAITROOM_DEMO_PORT": "1", "WAITROOM_DEMO_HEALTH_PORT": "2"}
    assert renamed_settings(_Settings.DEPRECATED_ENV, environ) == {}


async def test_a_component_that_does_not_drain_is_cancelled_at_once_on_stop() -> None:
    class Loop(Component):
        name = "loop"

    supervisor = Supervisor("svc", [Loop()], grace_s=30)
    running = asyncio.create_task(supervisor.run(handle_signals=False))
    await eventually(lambda: supervisor.ready, 5, "the service ready")
    supervisor.request_stop()
    assert await asyncio.wait_for(running, 2) == 0  # not the 30 s grace of a draining component


async def test_a_misconfigured_component_exits_with_code_2() -> None:
    class NeedsTopic(Component):
        name = "provisioning"

        async def start(self) -> None:
            raise Misconfigured("SNS topic not found")

    assert await Supervisor("svc", [NeedsTopic()]).run(handle_signals=False) == 2


# ------------------------------------------------------------------------- a component on its own loop


class Threaded(Recording):
    """Notes the thread and loop each call ran on."""

    def __init__(self, name: str, journal: list[str], **kwargs: Any) -> None:
        super().__init__(name, journal, **kwargs)
        self.threads: set[int] = set()
        self.loops: set[int] = set()

    def _where(self) -> None:
        self.threads.add(threading.get_ident())
        self.loops.add(id(asyncio.get_running_loop()))

    async def start(self) -> None:
        self._where()
        await super().start()

    async def run(self) -> None:
        self._where()
        await super().run()

    async def drain(self) -> None:
        self._where()
        await super().drain()

    async def stop(self) -> None:
        self._where()
        await super().stop()


async def test_a_component_on_its_own_loop_runs_its_whole_lifecycle_there_in_order() -> None:
    journal: list[str] = []
    built: list[Threaded] = []

    def make() -> Threaded:
        built.append(Threaded("b", journal))
        return built[0]

    own = OwnLoop("b", make)
    supervisor = Supervisor("svc", [Recording("a", journal), own, Recording("c", journal)])
    running = asyncio.create_task(supervisor.run(handle_signals=False))
    await eventually(lambda: supervisor.ready, 5, "the service ready")
    supervisor.request_stop()
    assert await asyncio.wait_for(running, 5) == 0

    assert journal == ["start a", "start b", "start c", "drain c", "stop c", "drain b", "stop b", "drain a", "stop a"]
    (component,) = built
    assert component.threads and threading.get_ident() not in component.threads and len(component.threads) == 1
    assert len(component.loops) == 1 and id(asyncio.get_running_loop()) not in component.loops
    assert own._thread is not None and not own._thread.is_alive(), "the loop's thread ends with the component"


async def test_a_failure_on_its_own_loop_ends_the_service_with_the_components_name_and_code() -> None:
    class Refused(Component):
        name = "sequencer"

        async def run(self) -> None:
            await asyncio.sleep(0.05)
            raise Misconfigured("session timeout below the broker's minimum")

    supervisor = Supervisor("svc", [OwnLoop("sequencer", Refused)])
    assert await asyncio.wait_for(supervisor.run(handle_signals=False), 5) == 2
    assert supervisor.failure is not None and supervisor.failure[0] == "sequencer"
    assert "broker's minimum" in str(supervisor.failure[1])


async def test_a_component_on_its_own_loop_that_does_not_drain_is_cancelled_at_once_and_stopped() -> None:
    stopped = threading.Event()

    class Loop(Component):
        name = "loop"

        async def stop(self) -> None:
            stopped.set()

    supervisor = Supervisor("svc", [OwnLoop("loop", Loop)], grace_s=30)
    running = asyncio.create_task(supervisor.run(handle_signals=False))
    await eventually(lambda: supervisor.ready, 5, "the service ready")
    supervisor.request_stop()
    assert await asyncio.wait_for(running, 3) == 0  # not the 30 s grace of a draining component
    assert stopped.is_set()


async def test_a_saturated_main_loop_does_not_hold_up_a_component_on_its_own_loop() -> None:
    """What it is for: the sequencer's group heartbeats keep their pace while the API's loop is
    busy (here: callbacks that each hold the loop 0.4 s, back to back, for 3 s)."""
    ticks: list[float] = []

    class Ticker(Component):
        name = "ticker"

        async def run(self) -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.05)

    supervisor = Supervisor("svc", [OwnLoop("ticker", Ticker)])
    running = asyncio.create_task(supervisor.run(handle_signals=False))
    await eventually(lambda: len(ticks) >= 3, 5, "the ticker ticking")

    def busy(until: float) -> None:
        end = time.monotonic() + 0.4
        while time.monotonic() < end:
            pass
        if time.monotonic() < until:
            asyncio.get_running_loop().call_soon(busy, until)

    began = time.monotonic()
    asyncio.get_running_loop().call_soon(busy, began + 3.0)
    await asyncio.sleep(0)
    while time.monotonic() < began + 3.0:
        await asyncio.sleep(0)
    during = [t for t in ticks if began <= t <= began + 3.0]
    supervisor.request_stop()
    assert await asyncio.wait_for(running, 5) == 0

    gaps = [b - a for a, b in zip(during, during[1:], strict=False)]
    assert len(during) >= 20, f"{len(during)} ticks in 3 s of a busy main loop"
    assert max(gaps) < 0.3, f"the component's loop was held up {max(gaps):.2f} s"
