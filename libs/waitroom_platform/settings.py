"""Settings blocks shared by every service.

Each service has one typed settings class with its own env prefix; the blocks here are nested into
it. Validators refuse unsafe defaults (a development secret) outside development.
"""

from __future__ import annotations

import ssl
from enum import StrEnum

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from waitroom_events.topics import TopicRegistry, topic_registry


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class KafkaSettings(BaseSettings):
    """Where the log is. ``KAFKA_BOOTSTRAP_SERVERS`` points every service at any cluster."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    client_id: str = "waitroom"

    def client_kwargs(self) -> dict[str, object]:
        """Keyword arguments for any aiokafka client."""
        kwargs: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_secret
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        return kwargs

    @property
    def sasl_secret(self) -> str | None:
        return self.sasl_password.get_secret_value() if self.sasl_password else None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for ``SSL`` and ``SASL_SSL`` (the CA bundle from ``KAFKA_SSL_CAFILE``), else None."""
        if not self.security_protocol.endswith("SSL"):
            return None
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(cafile=self.ssl_cafile)


class CommonSettings(BaseSettings):
    """Settings every service reads, with the ``WAITROOM_`` prefix."""

    model_config = SettingsConfigDict(env_prefix="WAITROOM_", extra="ignore")

    env: Environment = Environment.DEVELOPMENT
    topic_prefix: str = Field(default="waitroom", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")
    room_partitions: int = Field(default=12, ge=1, le=1000)
    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|console)$")

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        return value

    @property
    def is_development(self) -> bool:
        return self.env is Environment.DEVELOPMENT

    def topics(self) -> TopicRegistry:
        return topic_registry(self.topic_prefix, self.room_partitions)


def require_secret(value: SecretStr | None, dev_default: str, name: str, common: CommonSettings) -> SecretStr:
    """A secret from settings; the development default is refused outside development."""
    if value is None or not value.get_secret_value():
        if not common.is_development:
            raise ValueError(f"{name} must be set outside development")
        return SecretStr(dev_default)
    if value.get_secret_value() == dev_default and not common.is_development:
        raise ValueError(f"{name} is the development default; set a real secret outside development")
    if len(value.get_secret_value()) < 16 and not common.is_development:
        raise ValueError(f"{name} must be at least 16 characters")
    return value
