"""Notifier settings: ``WAITROOM_NOTIFIER_*`` plus the shared ``WAITROOM_*`` and ``KAFKA_*`` blocks.

Where AWS is, and as whom, is not here: boto3's own settings decide it (``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance and pod
roles), so the notifier runs unchanged against moto, LocalStack or AWS.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from waitroom_notifier.alarms import AlarmRule
from waitroom_notifier.metrics import MAX_DATUMS_PER_CALL, MAX_DIMENSIONS, METRIC_NAMES, ROOM_DIMENSION
from waitroom_platform.settings import CommonSettings, KafkaSettings

_NAME = r"^[A-Za-z0-9_-]{1,256}$"


class NotifierSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAITROOM_NOTIFIER_", extra="ignore")
    DEPRECATED_ENV: ClassVar[dict[str, str]] = {"WAITROOM_NOTIFIER_GROUP_PREFIX": "WAITROOM_NOTIFIER_GROUP_ID"}

    common: CommonSettings = Field(default_factory=CommonSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)

    #: the health port: ``/healthz``, ``/readyz``, Prometheus ``/metrics``; port 0 picks a free one
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=8013, ge=0, le=65535)

    # ---- CloudWatch metrics
    metrics_enabled: bool = True
    namespace: str = Field(default="Waitroom", min_length=1, max_length=255)
    #: extra dimensions on every metric, e.g. ``{"Environment": "prod"}`` (JSON in the environment)
    dimensions: dict[str, str] = Field(default_factory=dict)
    #: also send each metric without the ``Room`` dimension (what the managed alarms watch)
    rollup: bool = True
    #: 60: standard resolution; 1: high resolution (10 s alarms and graphs, at a higher price)
    storage_resolution: int = 60
    #: datums per PutMetricData call; CloudWatch takes up to 1000 (it took 20 before 2023)
    metrics_per_call: int = Field(default=MAX_DATUMS_PER_CALL, ge=1, le=MAX_DATUMS_PER_CALL)

    # ---- SNS alerts
    alerts_enabled: bool = True
    sns_topic_name: str = Field(default="waitroom-alerts", pattern=_NAME)
    #: an existing topic to publish to; without it the topic is found (or, managed, created) by name
    sns_topic_arn: str | None = None
    #: subscribed to the topic by e-mail when alarms are managed (AWS mails a confirmation link)
    operator_email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")
    source: str = Field(default="waitroom", min_length=1, max_length=40)

    # ---- managed alarms: the topic, the operator's subscription and CloudWatch alarms, at start-up
    managed_alarms: bool = False
    alarm_prefix: str = Field(default="waitroom", pattern=_NAME)
    #: threshold per metric for "any room above" alarms, e.g. ``{"EstimatedWait": 900}``
    alarm_thresholds: dict[str, float] = Field(
        default_factory=lambda: {"EstimatedWait": 900.0, "WaitP90": 900.0, "ExpiriesPerMinute": 100.0}
    )
    alarm_period_s: int = Field(default=60, ge=10)
    alarm_evaluation_periods: int = Field(default=2, ge=1, le=100)

    # ---- delivery
    #: consumer groups are ``<group id>-metrics`` and ``<group id>-alerts``; ``<prefix>.notifier``
    group_id: str | None = None
    max_records: int = Field(default=500, ge=1, le=10_000)
    aws_max_attempts: int = Field(default=3, ge=1, le=10)
    aws_retry_mode: Literal["standard", "adaptive"] = "standard"
    aws_connect_timeout_s: float = Field(default=3.0, gt=0)
    aws_read_timeout_s: float = Field(default=10.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    #: how long a consumer may wait on AWS before Kafka gives its partitions to another member
    max_poll_interval_s: float = Field(default=900.0, ge=10)

    @field_validator("dimensions")
    @classmethod
    def _dimensions(cls, value: dict[str, str]) -> dict[str, str]:
        if ROOM_DIMENSION in value:
            raise ValueError(f"{ROOM_DIMENSION!r} is the notifier's own dimension")
        if len(value) > MAX_DIMENSIONS - 1:
            raise ValueError(f"at most {MAX_DIMENSIONS - 1} extra dimensions")
        for name, dim in value.items():
            if not name or not dim or len(name) > 255 or len(dim) > 1024:
                raise ValueError("dimension names are 1-255 and values 1-1024 characters")
        return value

    @field_validator("alarm_thresholds")
    @classmethod
    def _thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - METRIC_NAMES
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; known: {sorted(METRIC_NAMES)}")
        return value

    @model_validator(mode="after")
    def _alarm_period(self) -> NotifierSettings:
        if self.storage_resolution not in (1, 60):
            raise ValueError("storage_resolution is 1 (high resolution) or 60 (standard)")
        high_res = self.storage_resolution == 1 and self.alarm_period_s in (10, 30)
        if not high_res and self.alarm_period_s % 60:
            raise ValueError("alarm_period_s is 10 or 30 (high resolution) or a multiple of 60")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must not be below backoff_initial_s")
        return self

    def alarm_rules(self) -> list[AlarmRule]:
        return [
            AlarmRule(
                metric=metric,
                threshold=threshold,
                period_s=self.alarm_period_s,
                evaluation_periods=self.alarm_evaluation_periods,
            )
            for metric, threshold in sorted(self.alarm_thresholds.items())
        ]

    def group(self, pipeline: str) -> str:
        return f"{self.group_id or self.common.topic_prefix + '.notifier'}-{pipeline}"
