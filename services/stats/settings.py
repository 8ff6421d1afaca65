"""Stats settings: ``WAITROOM_STATS_*`` plus the shared ``WAITROOM_*`` and ``KAFKA_*`` blocks."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from waitroom_core.thresholds import Rules
from waitroom_platform.settings import CommonSettings, KafkaSettings

RuleOverrides = dict[str, float | int | None]


class StatsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAITROOM_STATS_", extra="ignore")
    DEPRECATED_ENV: ClassVar[dict[str, str]] = {"WAITROOM_STATS_APP_ID": "WAITROOM_STATS_GROUP_ID"}

    common: CommonSettings = Field(default_factory=CommonSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)

    #: the health port: ``/healthz``, ``/readyz``, Prometheus ``/metrics``; port 0 picks a free one
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=8012, ge=0, le=65535)
    #: how often each live room's snapshot goes to room-stats (the seed polled every 10 s)
    snapshot_interval_s: float = Field(default=10.0, ge=0.1, le=300.0)
    #: faust app id: the consumer group and the prefix of its changelog topics; ``<prefix>.stats``
    group_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")
    #: faust's data folder (tables live in memory; faust still keeps metadata here)
    data_dir: Path | None = None
    #: how often consumed offsets are committed
    commit_interval_s: float = Field(default=1.0, gt=0.0, le=60.0)
    #: snapshots older than this (a replay after a long outage) update no alert
    alert_max_age_s: float = Field(default=60.0, gt=0.0)
    #: JSON: overrides of the default rules for every room, e.g. {"waiting_above": 500}
    default_rules: RuleOverrides = Field(default_factory=dict)
    #: JSON: per-room overrides on top of the defaults, e.g. {"summer-sale": {"stalled_after_s": null}}
    room_rules: dict[str, RuleOverrides] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _rules_valid(self) -> StatsSettings:
        # Build every rule set once, so a typo fails at start-up, not at the first snapshot.
        self.rules_for("")
        for room_id in self.room_rules:
            self.rules_for(room_id)
        return self

    @property
    def group(self) -> str:
        return self.group_id or f"{self.common.topic_prefix}.stats"

    @property
    def data_path(self) -> Path:
        return self.data_dir or Path(tempfile.gettempdir()) / f"waitroom-stats-{self.group}"

    def rules_for(self, room_id: str) -> Rules:
        rules = Rules().with_overrides(dict(self.default_rules))
        overrides = self.room_rules.get(room_id)
        return rules.with_overrides(dict(overrides)) if overrides else rules
