"""Composition root of the reaper: ``python -m waitroom_reaper``.

Settings, then the components: the topics, and the reaper (its health port comes with the runtime).
"""

from __future__ import annotations

import dataclasses

from waitroom_platform.admin import EnsureTopics
from waitroom_platform.metrics import expose_numbers
from waitroom_platform.runtime import Component
from waitroom_platform.service import run_service
from waitroom_reaper.reaper import Reaper, ReaperOptions
from waitroom_reaper.settings import ReaperSettings


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


def build(settings: ReaperSettings) -> list[Component]:
    reaper = build_reaper(settings)
    expose_numbers(
        "waitroom_reaper",
        lambda: {
            **dataclasses.asdict(reaper.metrics),
            "live_tickets": reaper.live_tickets(),
            "partitions": len(reaper.owned_partitions()),
        },
        "the reaper's counters since start",
    )
    return [EnsureTopics(settings.kafka, settings.common.topics().all), reaper]


def main() -> None:
    run_service("reaper", ReaperSettings, build)


if __name__ == "__main__":
    main()
