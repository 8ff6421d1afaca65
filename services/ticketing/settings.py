"""Ticketing settings: ``WAITROOM_TICKETING_*`` plus the shared ``WAITROOM_*`` and ``KAFKA_*`` blocks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from waitroom_platform.settings import CommonSettings, KafkaSettings, require_secret
from waitroom_ticketing.aws_vwr_settings import AwsVwrSettings
from waitroom_ticketing.edge import parse_networks

DEV_ADMIN_TOKEN = "dev-admin-token"  # noqa: S105 - refused outside development
DEV_TICKET_SECRET = "dev-ticket-secret-not-for-production"  # noqa: S105 - refused outside development


class TicketingSettings(AwsVwrSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAITROOM_TICKETING_", extra="ignore")
    DEPRECATED_ENV: ClassVar[dict[str, str]] = {"WAITROOM_TICKETING_SEQUENCER_GROUP": "WAITROOM_TICKETING_GROUP_ID"}

    common: CommonSettings = Field(default_factory=CommonSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)

    role: Literal["all", "api", "sequencer"] = "all"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    keepalive_s: int = Field(default=75, ge=1, le=3600)
    #: server limits (services/ticketing/limits.py): a body over this answers 413 unread
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: request line and headers: at most this many bytes (431) ...
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    #: ... arriving within this many seconds of the connection or of a kept-alive request's first byte (408)
    header_timeout_s: float = Field(default=10.0, gt=0.0, le=300.0)
    #: open connections per process; one more is answered 503 + Retry-After and closed
    max_connections: int = Field(default=10_000, ge=1)
    #: API processes on this host sharing the public port (services/ticketing/workers.py)
    workers: int = Field(default=1, ge=1, le=64)
    #: set by worker 0 for the workers it starts; not an operator's setting
    worker_index: int = Field(default=0, ge=0)
    #: the admin listener: ``/v1/admin/...`` and the API docs, never on the public port; 0 picks a free port
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=8001, ge=0, le=65535)
    #: Swagger UI (assets served locally) of the admin and the public API, on the admin listener
    docs_enabled: bool = True
    #: CIDRs of the reverse proxies whose ``X-Forwarded-For`` names the client (JSON list or
    #: comma-separated); empty trusts none, so the TCP peer is the client
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: the health port: ``/healthz``, ``/readyz``, Prometheus ``/metrics``; port 0 picks a free one
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=8011, ge=0, le=65535)

    admin_token: SecretStr | None = None
    ticket_secret: SecretStr | None = None
    jwt_keys_dir: Path | None = None
    jwt_active_kid: str | None = None
    jwt_issuer: str = "waitroom"
    entry_token_ttl_s: int = Field(default=60, ge=5, le=3600)

    join_wait_s: float = Field(default=2.0, ge=0.0, le=30.0)
    publish_timeout_s: float = Field(default=5.0, gt=0.0, le=60.0)
    #: heartbeats of a room are written as one record per window (0: one record per heartbeat);
    #: at most 100 ms, which the reaper's grace covers (services/ticketing/heartbeats.py)
    heartbeat_window_ms: float = Field(default=50.0, ge=0.0, le=100.0)
    join_rate_per_ip: float = Field(default=5.0, ge=0.0)
    join_burst: int = Field(default=20, ge=1)
    #: consumer group of the sequencers; defaults to ``<prefix>.sequencer``
    group_id: str | None = None
    transactions: bool = True
    #: sequencer snapshots (docs/adr/0007): after this many events (0: none written or read) ...
    snapshot_every_events: int = Field(default=100_000, ge=0)
    #: ... or this many seconds after the last one, if anything happened since
    snapshot_every_s: float = Field(default=60.0, gt=0.0)
    #: ended tickets are left out of snapshots this long after they ended (their room's clock);
    #: decoding them is most of a takeover (docs/benchmarks.md, "Failover with snapshots")
    snapshot_keep_ended_s: float = Field(default=600.0, ge=0.0)
    #: how long the group waits for a silent sequencer before moving its partitions: most of a
    #: failover (docs/adr/0007). The brokers' group.min.session.timeout.ms is the floor: 6 s in
    #: Kafka by default, 1 s in the brokers waitroom starts; a cluster that refuses it stops
    #: ticketing with a message naming both settings
    session_timeout_ms: int = Field(default=3_000, ge=1_000, le=300_000)
    #: transactional ids a partition's sequencer writes its transactions with in turn (ADR 0009): 2
    #: lets a transaction start while the previous one's markers are written; 1 only for a rolling
    #: upgrade from a version that knew one (every takeover fences both either way)
    transactional_ids: int = Field(default=2, ge=1, le=2)
    #: role "all": a join whose room this process's sequencer owns is decided by it directly, not
    #: written to waitroom.commands and fetched back (docs/adr/0011); false: every join is a command
    local_joins: bool = True

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_proxies(cls, value: list[str]) -> list[str]:
        try:
            return [str(network) for network in parse_networks(value)]
        except ValueError as exc:
            raise ValueError(f"trusted_proxies: {exc}") from None

    @model_validator(mode="after")
    def _workers(self) -> TicketingSettings:
        if self.workers > 1 and self.port == 0:
            raise ValueError("workers > 1 need a fixed port (they share it): set WAITROOM_TICKETING_PORT")
        if self.workers > 1 and self.role == "sequencer":
            raise ValueError("workers are API processes: role 'sequencer' serves no HTTP")
        return self

    @model_validator(mode="after")
    def _ports(self) -> TicketingSettings:
        if self.admin_port != 0 and self.admin_port in (self.port, self.health_port):
            raise ValueError(f"admin_port {self.admin_port} is also the public or the health port")
        return self

    @model_validator(mode="after")
    def _secrets(self) -> TicketingSettings:
        self.admin_token = require_secret(self.admin_token, DEV_ADMIN_TOKEN, "admin_token", self.common)
        self.ticket_secret = require_secret(self.ticket_secret, DEV_TICKET_SECRET, "ticket_secret", self.common)
        if self.jwt_keys_dir is None and not self.common.is_development:
            raise ValueError("jwt_keys_dir must be set outside development")
        return self

    @property
    def group(self) -> str:
        return self.group_id or f"{self.common.topic_prefix}.sequencer"
