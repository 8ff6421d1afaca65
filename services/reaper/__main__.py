"""Composition root of the reaper: ``python -m waitroom_reaper``.

Builds settings, makes sure the topics exist, and runs the reaper with its health endpoint until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from typing import Any

import structlog

from waitroom_platform.admin import ensure_service_topics
from waitroom_platform.service import load_settings, run_async, service_context
from waitroom_reaper.health import HealthServer
from waitroom_reaper.reaper import Reaper, ReaperOptions
from waitroom_reaper.settings import ReaperSettings

log = structlog.get_logger()


def build_reaper(settings: ReaperSettings) -> Reaper:
    options = ReaperOptions(
        group_id=settings.group,
        heartbeat_group_id=settings.heartbeat_group,
        heartbeat_grace_s=settings.heartbeat_grace_s,
        check_tick_s=settings.check_tick_s,
        resend_expire_after_s=settings.resend_expire_after_s,
        recovery_margin_s=settings.recovery_margin_s,
        session_timeout_ms=settings.session_timeout_ms,
    )
    return Reaper(settings.kafka, settings.common.topics(), options)


async def run(settings: ReaperSettings) -> None:
    topics = settings.common.topics()
    await ensure_service_topics(settings.kafka, topics.all())

    reaper = build_reaper(settings)

    def metrics() -> dict[str, Any]:
        return {
            **dataclasses.asdict(reaper.metrics),
            "live_tickets": reaper.live_tickets(),
            "partitions": reaper.owned_partitions(),
        }

    health = HealthServer(settings.host, settings.port, lambda: reaper.ready, metrics)
    await health.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    work = asyncio.create_task(reaper.run(), name="reaper")
    stopper = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait([work, stopper], return_when=asyncio.FIRST_COMPLETED)
    failed = work.done() and not work.cancelled() and work.exception() is not None
    work.cancel()
    stopper.cancel()
    await asyncio.gather(work, stopper, return_exceptions=True)
    await health.stop()
    if failed:
        log.error("reaper_failed", error=repr(work.exception()))
        raise SystemExit(1)
    log.info("reaper_stopped")


def main() -> None:
    settings = load_settings(ReaperSettings, "reaper")
    with service_context("reaper", settings.common):
        run_async(run(settings))


if __name__ == "__main__":
    main()
