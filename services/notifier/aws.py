"""boto3 clients and the patience around them.

Two layers of retry. botocore's own (``standard`` or ``adaptive`` mode) retries a throttled or 5xx
call a few times within one call. Above it, :func:`call_until_accepted` keeps trying with a capped,
jittered backoff for as long as it takes: AWS (or the moto server) being down for minutes must
neither lose an alert nor crash-loop the service. Only an error that is about the request itself
(a validation error) is final: that record is poison and goes to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from waitroom_notifier.settings import NotifierSettings

log = structlog.get_logger()

T = TypeVar("T")

#: Error codes that say the request itself is wrong: retrying it can never succeed.
REJECTING_CODES = frozenset(
    {
        "InvalidParameter",
        "InvalidParameterValue",
        "InvalidParameterValueException",
        "InvalidParameterCombination",
        "InvalidParameterException",
        "MissingParameter",
        "ValidationError",
        "ValidationException",
        "InvalidFormat",
    }
)


class Rejected(Exception):
    """AWS refused the request for what it contains; the records behind it are poison."""


def make_client(service: str, settings: NotifierSettings) -> Any:
    """A client configured by boto3's standard settings plus our timeouts and retry mode.

    ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_SNS``...), the region and the credentials come from
    the environment or profile, read by boto3 itself; nothing here logs or stores them.
    """
    config = Config(
        retries={"mode": settings.aws_retry_mode, "max_attempts": settings.aws_max_attempts},
        connect_timeout=settings.aws_connect_timeout_s,
        read_timeout=settings.aws_read_timeout_s,
        user_agent_extra="waitroom-notifier",
    )
    return boto3.session.Session().client(service, config=config)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return type(exc).__name__


def is_rejection(exc: BaseException) -> bool:
    """A client error about the request itself (not throttling, not 5xx, not credentials)."""
    if not isinstance(exc, ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return error_code(exc) in REJECTING_CODES and 400 <= status < 500


@dataclass
class Backoff:
    """Capped exponential backoff with jitter: ``initial``, ``2 initial``, ... up to ``maximum``."""

    initial_s: float
    maximum_s: float
    rng: Callable[[], float] = random.random

    def delay(self, attempt: int) -> float:
        """Delay before retry ``attempt`` (1-based): between half and all of the capped exponential."""
        ceiling = min(self.maximum_s, self.initial_s * 2 ** min(attempt - 1, 30))
        return ceiling / 2 + self.rng() * ceiling / 2


async def call_until_accepted(
    call: Callable[[], T],
    *,
    what: str,
    backoff: Backoff,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    **log_context: Any,
) -> T:
    """Run the blocking ``call`` in a thread until AWS accepts it; raise :class:`Rejected` if it refuses it.

    Cancellation (shutdown) ends the wait at once; the caller has not committed, so nothing is lost.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await asyncio.to_thread(call)
        except (ClientError, BotoCoreError) as exc:
            if is_rejection(exc):
                raise Rejected(f"{what}: {error_code(exc)}: {exc}") from exc
            delay = backoff.delay(attempt)
            log.warning(
                "aws_call_failed",
                call=what,
                attempt=attempt,
                error_code=error_code(exc),
                error=str(exc)[:300],
                retry_in_s=round(delay, 2),
                **log_context,
            )
            await sleep(delay)
