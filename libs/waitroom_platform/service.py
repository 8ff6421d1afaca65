"""A service's entry point in one call: settings, logging, telemetry, components, health, exit code.

``run_service("reaper", ReaperSettings, build)`` is all a ``__main__`` does:

1. settings that do not validate end the process with exit code 2 and pydantic's explanation,
   before anything else starts; environment names that were renamed still work, with a warning;
2. logging and telemetry are set up once;
3. ``build(settings)`` returns the service's components; it does no I/O, but runs on the loop
   (Kafka clients bind to the loop they are made on). The health server is put first, so it
   answers while the others start and until they have stopped;
4. a :class:`~waitroom_platform.runtime.Supervisor` runs them on uvloop; its exit code (0 after
   a signal, 1 after a component failed) is the process's; telemetry is flushed on the way out.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

import structlog
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from waitroom_platform.health import HealthServer
from waitroom_platform.logging import configure_logging
from waitroom_platform.runtime import Component, Supervisor, run_on_uvloop
from waitroom_platform.settings import CommonSettings
from waitroom_platform.telemetry import setup_telemetry

log = structlog.get_logger()

#: after the supervisor has stopped everything, how long the process may take to exit
EXIT_WATCHDOG_S = 5.0


class ServiceSettings(Protocol):
    common: CommonSettings
    health_host: str
    health_port: int
    #: old environment name -> its new name (read with a warning while only the old one is set)
    DEPRECATED_ENV: ClassVar[Mapping[str, str]]


S = TypeVar("S", bound=BaseSettings)


def renamed_settings(renames: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The renamed variables set only under their old name: ``{old: new}``."""
    return {old: new for old, new in renames.items() if old in environ and new not in environ}


def load_settings(cls: type[S], service: str) -> tuple[S, dict[str, str]]:
    """The service's settings, and the renamed variables that were read under their old name."""
    renames: Mapping[str, str] = getattr(cls, "DEPRECATED_ENV", {})
    old_names = renamed_settings(renames, os.environ)
    prefix = str(cls.model_config.get("env_prefix", ""))
    overrides: dict[str, Any] = {new.removeprefix(prefix).lower(): os.environ[old] for old, new in old_names.items()}
    try:
        return cls(**overrides), old_names
    except ValidationError as exc:
        sys.stderr.write(f"waitroom-{service}: invalid settings\n{exc}\n")
        raise SystemExit(2) from None


def run_service(service: str, cls: type[S], build: Callable[[S], Sequence[Component]]) -> None:
    """Run one service until a signal or its first failure, then exit with the supervisor's code."""
    settings, old_names = load_settings(cls, service)
    typed: ServiceSettings = settings  # type: ignore[assignment]
    configure_logging(typed.common.log_level, typed.common.log_format, service=service)
    for old, new in old_names.items():
        log.warning("setting_renamed", old=old, new=new, hint=f"set {new}; {old} will stop working")
    telemetry = setup_telemetry(service)
    try:
        code = run_on_uvloop(_supervise(service, typed, lambda: build(settings)))
    finally:
        telemetry.shutdown()
    raise SystemExit(code)


async def _supervise(service: str, settings: ServiceSettings, build: Callable[[], Sequence[Component]]) -> int:
    components = build()  # inside the loop: Kafka clients bind to the running loop when made
    supervisor: Supervisor
    health = HealthServer(
        settings.health_host, settings.health_port, alive=lambda: supervisor.alive, ready=lambda: supervisor.ready
    )
    supervisor = Supervisor(service, [health, *components])
    code = await supervisor.run()
    _exit_anyway_after(EXIT_WATCHDOG_S, code)
    return code


def _exit_anyway_after(seconds: float, code: int) -> None:
    """Every component has stopped; if the loop's own shutdown (cancelling stray library tasks)
    hangs, exit anyway, so a stopped service never outlives its orchestrator's grace period."""

    def _exit() -> None:
        log.error("exit_forced", after_s=seconds, code=code)
        os._exit(code)

    timer = threading.Timer(seconds, _exit)
    timer.daemon = True
    timer.start()
