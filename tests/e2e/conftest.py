"""End-to-end fixtures: the services run as real processes against the session's Kafka."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.http import ADMIN_TOKEN

from waitroom_devtools.procs import ServiceProcess, free_port, free_ports
from waitroom_events.topics import TopicRegistry
from waitroom_ticketing.tokens import write_private_key

TICKET_SECRET = "e2e-ticket-secret-0123456789abcdef"


def prefix_of(topics: TopicRegistry) -> str:
    return topics.commands.name.removesuffix(".commands")


def service_env(kafka_bootstrap: str, topics: TopicRegistry, **extra: str) -> dict[str, str]:
    """The environment every service of one test shares: the broker, the topics, log format."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "WAITROOM_TOPIC_PREFIX": prefix_of(topics),
        "WAITROOM_ROOM_PARTITIONS": str(topics.commands.partitions),
        "WAITROOM_LOG_FORMAT": "json",
        "WAITROOM_LOG_LEVEL": "INFO",
        # Many services of one test share the machine: each health port is picked free (a test
        # that probes one sets it).
        "WAITROOM_TICKETING_HEALTH_PORT": "0",
        "WAITROOM_REAPER_HEALTH_PORT": "0",
        "WAITROOM_STATS_HEALTH_PORT": "0",
        "WAITROOM_NOTIFIER_HEALTH_PORT": "0",
        **extra,
    }


class TicketingProcess(ServiceProcess):
    @property
    def url(self) -> str:
        """The public listener: visitors' calls, the waiting page, the JWKS."""
        return f"http://127.0.0.1:{self.env['WAITROOM_TICKETING_PORT']}"

    @property
    def admin_url(self) -> str:
        """The admin listener: ``/v1/admin/...`` and the API docs."""
        return f"http://127.0.0.1:{self.env['WAITROOM_TICKETING_ADMIN_PORT']}"


class Launcher:
    """Starts service processes for one test, restarts them like a supervisor, stops every one."""

    def __init__(self, kafka_bootstrap: str, log_dir: Path) -> None:
        self._bootstrap = kafka_bootstrap
        self._log_dir = log_dir
        self.started: list[ServiceProcess] = []

    def start(self, proc: ServiceProcess, ready_timeout: float = 90) -> ServiceProcess:
        self.started.append(proc.start())
        proc.wait_ready(ready_timeout)
        return proc

    def restart(self, proc: ServiceProcess, ready_timeout: float = 90) -> ServiceProcess:
        """The same service again, same port and settings: a supervisor's restart after a crash."""
        again = type(proc)(proc.name, proc.module, proc.env, proc.log_path, proc.ready_url, proc.args)
        return self.start(again, ready_timeout)

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop()


class TicketingLauncher(Launcher):
    """Starts ticketing processes (API + sequencer each)."""

    def __init__(self, kafka_bootstrap: str, log_dir: Path, keys_dir: Path) -> None:
        super().__init__(kafka_bootstrap, log_dir)
        self._keys_dir = keys_dir

    def __call__(self, topics: TopicRegistry, n: int = 1, **extra: str) -> list[TicketingProcess]:
        procs = []
        for _ in range(n):
            index = len(self.started)
            port, admin_port = free_ports(2)
            # The public and the admin listener each on a free port; ``extra`` may override any
            # of these (a test of the rate limit sets its own rate).
            defaults = {
                "WAITROOM_TICKETING_PORT": str(port),
                "WAITROOM_TICKETING_ADMIN_PORT": str(admin_port),
                "WAITROOM_TICKETING_ADMIN_TOKEN": ADMIN_TOKEN,
                "WAITROOM_TICKETING_TICKET_SECRET": TICKET_SECRET,
                "WAITROOM_TICKETING_JWT_KEYS_DIR": str(self._keys_dir),
                "WAITROOM_TICKETING_JOIN_RATE_PER_IP": "0",
                "WAITROOM_TICKETING_JOIN_WAIT_S": "10",
            }
            env = service_env(self._bootstrap, topics, **{**defaults, **extra})
            log = self._log_dir / f"ticketing-{index}.log"
            proc = TicketingProcess(f"ticketing-{index}", "waitroom_ticketing", env, log)
            proc.ready_url = proc.url + "/readyz"
            self.started.append(proc.start())
            procs.append(proc)
        for proc in procs:
            proc.wait_ready(90)
        return procs

    def restart(self, proc: ServiceProcess, ready_timeout: float = 90) -> TicketingProcess:
        again = super().restart(proc, ready_timeout)
        assert isinstance(again, TicketingProcess)
        return again


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    path = tmp_path / "jwt-keys"
    path.mkdir()
    write_private_key(path / "2026-11-01.pem")
    return path


@pytest.fixture
def launch_ticketing(kafka_bootstrap: str, tmp_path: Path, keys_dir: Path) -> Iterator[TicketingLauncher]:
    launcher = TicketingLauncher(kafka_bootstrap, tmp_path, keys_dir)
    yield launcher
    launcher.stop_all()


class Processes:
    """Every process this test starts, stopped (SIGTERM, so exporters flush) at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[ServiceProcess] = []

    def start(
        self, name: str, module: str, env: dict[str, str], ready_url: str | None = None, args: tuple[str, ...] = ()
    ) -> ServiceProcess:
        proc = ServiceProcess(name, module, env, self.log_dir / f"{name}.log", ready_url=ready_url, args=args)
        self.started.append(proc.start())
        return proc

    def start_moto(self) -> tuple[ServiceProcess, str]:
        """A moto server (SNS, CloudWatch over HTTP) on a free loopback port, and its URL; not waited for."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        moto = self.start("moto", "moto.server", {}, f"{url}/moto-api/data.json", ("-H", "127.0.0.1", "-p", str(port)))
        return moto, url

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


def moto_env(url: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",  # moto accepts any
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
