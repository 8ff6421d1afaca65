"""What every service's entry point does before and after its own work.

Settings that do not validate end the process with exit code 2 and pydantic's explanation, before
anything else starts; logging and telemetry are set up once, and telemetry is flushed on the way out.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from waitroom_platform.logging import configure_logging
from waitroom_platform.settings import CommonSettings
from waitroom_platform.telemetry import Telemetry, setup_telemetry

S = TypeVar("S", bound=BaseSettings)
T = TypeVar("T")


def load_settings(cls: type[S], service: str) -> S:
    try:
        return cls()
    except ValidationError as exc:
        sys.stderr.write(f"waitroom-{service}: invalid settings\n{exc}\n")
        raise SystemExit(2) from None


@contextmanager
def service_context(service: str, common: CommonSettings) -> Iterator[Telemetry]:
    configure_logging(common.log_level, common.log_format, service=service)
    telemetry = setup_telemetry(service)
    try:
        yield telemetry
    finally:
        telemetry.shutdown()


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run a service's main coroutine on uvloop where installed (uvicorn[standard] brings it)."""
    runner: Callable[[Coroutine[Any, Any, T]], T]
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    return runner(main)
