"""Composition root of the stats service: ``python -m waitroom_stats``.

Settings, then the components: the registry's topics and faust's changelog topics (with the log's
partition count), and the faust worker, run inside the service runtime (on uvloop, with the same
health port and signals as every service) instead of faust's own command line and event loop.
Stopping lets faust finish the event in hand, commit, and flush its producer.
"""

from __future__ import annotations

import asyncio

import structlog
from faust import Worker

from waitroom_platform.admin import EnsureTopics
from waitroom_platform.runtime import Component
from waitroom_platform.service import run_service
from waitroom_stats.app import Stats
from waitroom_stats.settings import StatsSettings

log = structlog.get_logger()


class _EmbeddedWorker(Worker):
    """faust's worker without its signal handlers: the supervisor owns SIGTERM and SIGINT."""

    def install_signal_handlers(self) -> None:
        pass


class StatsWorker(Component):
    """The faust app (agents, tables, the snapshot timer) as one runtime component."""

    name = "faust"

    def __init__(self, settings: StatsSettings) -> None:
        self._settings = settings
        self._stats: Stats | None = None
        self._worker: _EmbeddedWorker | None = None

    @property
    def stats(self) -> Stats:
        """The faust app and its tables, made on first use inside the running loop (faust binds to it)."""
        if self._stats is None:
            self._stats = Stats(self._settings)
        return self._stats

    async def start(self) -> None:
        settings = self._settings
        settings.data_path.mkdir(parents=True, exist_ok=True)
        log.info(
            "stats_starting",
            group=settings.group,
            snapshot_interval_s=settings.snapshot_interval_s,
            partitions=self.stats.registry.room_events.partitions,
        )
        worker = _EmbeddedWorker(
            self.stats.app,
            loop=asyncio.get_running_loop(),
            loglevel=settings.common.log_level if settings.common.log_level != "INFO" else "WARNING",
            quiet=True,
            redirect_stdouts=False,
            override_logging=False,
            # A daemon worker's start() only returns once it stops; the supervisor's run() waits instead.
            daemon=False,
        )
        self._worker = worker
        await worker.start()

    async def run(self) -> None:
        assert self._worker is not None
        await self._worker.wait_until_stopped()
        reason = self._worker.crash_reason
        if reason is not None:
            raise RuntimeError("the faust worker crashed") from reason

    async def stop(self) -> None:
        if self._worker is not None:
            await self._worker.stop()

    def ready(self) -> bool:
        """Started, and the tables recovered from their changelogs (snapshots are whole then)."""
        if self._worker is None or self._stats is None:
            return False
        app = self._stats.app
        recovered: bool = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        return recovered and not app.rebalancing


def build(settings: StatsSettings) -> list[Component]:
    worker = StatsWorker(settings)
    return [
        EnsureTopics(settings.kafka, lambda: [*settings.common.topics().all(), *worker.stats.changelog_specs()]),
        worker,
    ]


def main() -> None:
    run_service("stats", StatsSettings, build)


if __name__ == "__main__":
    main()
