"""Composition root of the stats service: ``python -m waitroom_stats``.

Creates the registry's topics and faust's changelog topics (with the log's partition count), then
runs the faust worker without its web server. SIGTERM and SIGINT stop the worker cleanly: faust
finishes the event in hand, commits, and flushes its producer.
"""

from __future__ import annotations

import asyncio

import structlog
from faust import Worker

from waitroom_platform.admin import ensure_service_topics
from waitroom_platform.service import load_settings, service_context
from waitroom_stats.app import Stats
from waitroom_stats.settings import StatsSettings

log = structlog.get_logger()


def main() -> None:
    settings = load_settings(StatsSettings, "stats")
    with service_context("stats", settings.common):
        _run(settings)


def _run(settings: StatsSettings) -> None:
    stats = Stats(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    specs = [*settings.common.topics().all(), *stats.changelog_specs()]
    loop.run_until_complete(ensure_service_topics(settings.kafka, specs))
    settings.data_path.mkdir(parents=True, exist_ok=True)
    log.info(
        "stats_starting",
        group=settings.group_id,
        snapshot_interval_s=settings.snapshot_interval_s,
        partitions=stats.registry.room_events.partitions,
    )
    worker = Worker(
        stats.app,
        loop=loop,
        loglevel=settings.common.log_level if settings.common.log_level != "INFO" else "WARNING",
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
