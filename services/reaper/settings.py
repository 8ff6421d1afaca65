"""Reaper settings: ``WAITROOM_REAPER_*`` plus the shared ``WAITROOM_*`` and ``KAFKA_*`` blocks."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from waitroom_platform.settings import CommonSettings, KafkaSettings


class ReaperSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAITROOM_REAPER_", extra="ignore")
    DEPRECATED_ENV: ClassVar[dict[str, str]] = {
        "WAITROOM_REAPER_HOST": "WAITROOM_REAPER_HEALTH_HOST",
        "WAITROOM_REAPER_PORT": "WAITROOM_REAPER_HEALTH_PORT",
    }

    common: CommonSettings = Field(default_factory=CommonSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)

    #: consumer group over the delay topic; defaults to ``<prefix>.reaper``
    group_id: str | None = None
    #: the health port: ``/healthz``, ``/readyz``, Prometheus ``/metrics``; port 0 picks a free one
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=8010, ge=0, le=65535)

    #: heartbeats up to a ticket's deadline plus this must have been read before it expires; it covers the
    #: API's heartbeat window (WAITROOM_TICKETING_HEARTBEAT_WINDOW_MS, at most 100 ms) plus the publish latency
    heartbeat_grace_s: float = Field(default=0.25, ge=0.0, le=5.0)
    #: checks written within one tick fall due together, in one consumer round
    check_tick_s: float = Field(default=1.0, ge=0.0, le=10.0)
    #: an expiry still not applied after this is asked for again by the next durable check
    resend_expire_after_s: float = Field(default=10.0, gt=0.0)
    #: recovery reads heartbeats from now - max(room timeout) - this
    recovery_margin_s: float = Field(default=30.0, ge=0.0)
    #: Kafka group session timeout: how soon a crashed reaper's partitions move to another
    session_timeout_ms: int = Field(default=6_000, ge=6_000, le=300_000)
    #: start a partition from the sequencer's newest snapshot (docs/adr/0007) instead of offset 0
    snapshots: bool = True

    @property
    def group(self) -> str:
        return self.group_id or f"{self.common.topic_prefix}.reaper"

    @property
    def heartbeat_group(self) -> str:
        """Where the reaper commits how far it has dead-lettered the heartbeats (no membership)."""
        return f"{self.group}.heartbeats"
