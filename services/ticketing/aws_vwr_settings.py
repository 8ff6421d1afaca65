"""Settings of the AWS Virtual Waiting Room facade (``WAITROOM_TICKETING_AWS_VWR_*``), off by default.

A mixin of :class:`~waitroom_ticketing.settings.TicketingSettings`, so the variables share its prefix.
The defaults are the AWS solution's own CloudFormation defaults (``QueuePositionExpiryPeriod`` 900 s,
``ValidityPeriod`` 3600 s), so a migrated deployment behaves as it did without being told.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

#: a path prefix: ``/`` and then segments of URL-safe characters, no trailing slash
PREFIX = r"^(/[A-Za-z0-9._~-]+)+$"


class AwsVwrSettings(BaseModel):
    #: mount the facade: public calls on the public listener, private calls on the admin listener
    aws_vwr_enabled: bool = False
    #: where both sets of calls are mounted (AWS's API Gateway stage, e.g. ``/prod``, maps onto this)
    aws_vwr_prefix: str = Field(default="/aws-vwr", pattern=PREFIX)
    #: AWS's ``QueuePositionExpiryPeriod``: how long a served position may wait to claim its token
    aws_vwr_queue_position_expiry_period: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    #: AWS's ``ValidityPeriod``: the token set's lifetime, and so how long its session holds a slot
    aws_vwr_validity_period: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    #: PEM RSA private key (2048 bits or more) that signs the facade's RS256 tokens; every replica
    #: needs the same one. Unset in development: a key made at start-up, lost with the process.
    aws_vwr_key_file: Path | None = None
    #: the tokens' ``iss``; unset: the public base URL the client called plus the prefix, as AWS
    #: derives it from the API's domain and stage
    aws_vwr_issuer: str | None = Field(default=None, min_length=1, max_length=2048)

    @model_validator(mode="after")
    def _key_outside_development(self) -> Any:
        common = getattr(self, "common", None)
        development = common is None or common.is_development
        if self.aws_vwr_enabled and self.aws_vwr_key_file is None and not development:
            raise ValueError("aws_vwr_key_file must be set outside development when aws_vwr_enabled")
        return self
