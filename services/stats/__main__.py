"""Composition root of the stats service: ``python -m waitroom_stats``.

Creates the registry's topics and faust's changelog topics (with the log's partition count), then
runs the faust worker without its web server. SIGTERM and SIGINT stop the worker cleanly: faust
finishes the event in hand, commits, and flushes its producer.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import structlog
from faust import Worker
from pydantic import ValidationError

from waitroom_platform.admin import ensure_topics
from waitroom_platform.logging import configure_logging
from waitroom_platform.telemetry import setup_telemetry
from waitroom_stats.app import Stats
from waitroom_stats.settings import StatsSettings

log = structlog.get_logger()


def main() -> None:
    try:
        settings = StatsSettings()
    except ValidationError as exc:
        sys.stderr.write(f"waitroom-stats: invalid settings\n{exc}\n")
        raise SystemExit(2) from None
    configure_logging(settings.common.log_level, settings.common.log_format, service="stats")
    telemetry = setup_telemetry("stats")
    stats = Stats(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    specs = [*settings.common.topics().all(), *stats.changelog_specs()]
    loop.run_until_complete(ensure_topics(settings.kafka.bootstrap_servers, specs, **_admin_options(settings)))
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
    try:
        worker.execute_from_commandline()
    finally:
        telemetry.shutdown()


def _admin_options(settings: StatsSettings) -> dict[str, Any]:
    options = settings.kafka.client_kwargs()
    options.pop("bootstrap_servers", None)
    return options


if __name__ == "__main__":
    main()
