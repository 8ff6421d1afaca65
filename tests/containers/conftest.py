"""The containers layer: the images built by ``images/build.sh`` on one podman network.

Once for the layer (shared by every test here, torn down after the last one): a podman engine (``support.containers.PodmanEngine``:
``podman system service`` on a socket of its own, started here and stopped at the end), one
network, the Kafka container (``kafka:9092`` on the network, a loopback port for the tests) and moto
(``moto:5000``). Per test: a topic prefix of its own, its topics, and the service containers it asks
``stack`` for, all removed after it; their logs land in the test's ``tmp_path`` and their tails are
printed when the test fails.

The layer is skipped only where podman is missing and cannot be installed (not root); otherwise a
missing podman or image fails it, naming ``make containers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import boto3
import httpx
import pytest
import pytest_asyncio
from support.containers import (
    APP_IMAGE,
    KAFKA_IMAGE,
    MOTO_IMAGE,
    EngineUnavailable,
    KafkaNode,
    PodmanEngine,
    container,
    engine_missing_reason,
    host_port,
    logs_of,
)
from support.http import ADMIN_TOKEN
from support.waiting import eventually
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

from waitroom_devtools.procs import tail_lines
from waitroom_events.topics import TopicRegistry, topic_registry
from waitroom_platform.admin import ensure_topics, wait_for_broker
from waitroom_ticketing.tokens import write_private_key

TICKET_SECRET = "containers-ticket-secret-0123456789abcdef"
REGION = "eu-west-1"
MOTO_PORT = 5000
#: uid of the image's user: files mounted into a service container must be readable by it
IMAGE_UID = 10001
#: each service's health port in its container (the image's defaults) and ticketing's listeners
HEALTH_PORTS = {"ticketing": 8011, "reaper": 8010, "stats": 8012, "notifier": 8013}
API_PORT = 8000
ADMIN_PORT = 8001
READY_TIMEOUT_S = 90
#: the shared containers live as long as this folder's tests: torn down after its last one, not
#: kept running through the rest of a whole-suite session
LAYER = "package"


#: set on a test's item when its call failed, so its stack prints the services' last lines
FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[FAILED] = report.failed


# --- the layer's engine, network, Kafka and moto ------------------------------------------------


@pytest.fixture(scope=LAYER)
def engine() -> Iterator[PodmanEngine]:
    reason = engine_missing_reason()
    if reason:
        pytest.skip(reason)
    unavailable = ""
    try:
        with PodmanEngine() as running:
            running.require_images(APP_IMAGE, KAFKA_IMAGE, MOTO_IMAGE)
            running.require_current_app_image()
            yield running
    except EngineUnavailable as exc:
        unavailable = str(exc)
    if unavailable:
        pytest.fail(unavailable, pytrace=False)


@pytest.fixture(scope=LAYER)
def network(engine: PodmanEngine) -> Iterator[Network]:
    made = engine.network()
    yield made
    with contextlib.suppress(Exception):
        made.remove()


@pytest_asyncio.fixture(scope=LAYER, loop_scope="session")
async def kafka(network: Network) -> AsyncIterator[KafkaNode]:
    node = KafkaNode(network)
    try:
        await asyncio.to_thread(node.start)
        await wait_for_broker(node.bootstrap, timeout_s=90)
        yield node
    finally:
        node.stop()


@dataclass
class Moto:
    """The moto container: ``moto:5000`` for the services, a loopback port for the tests."""

    made: DockerContainer
    url: str = ""
    internal_url: str = f"http://moto:{MOTO_PORT}"

    def client(self, service: str) -> Any:
        return boto3.session.Session().client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def env(self) -> dict[str, str]:
        """boto3's standard settings for a service container, pointing at moto on the network."""
        return {
            "AWS_ENDPOINT_URL": self.internal_url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",  # moto accepts any
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    async def published(self, topic_name: str) -> list[dict[str, Any]]:
        """Every notification moto's SNS topic of this name accepted (its own record of each Publish)."""
        async with httpx.AsyncClient(timeout=10) as http:
            data = (await http.get(f"{self.url}/moto-api/data.json")).json()
        seen: dict[str, dict[str, Any]] = {}
        for topic in data.get("sns", {}).get("Topic", []):
            if topic["arn"].rsplit(":", 1)[-1] != topic_name:
                continue
            for message_id, message, subject, attributes, _group in topic["sent_notifications"]:
                seen[message_id] = {"message": message, "subject": subject, "attributes": attributes}
        return list(seen.values())


@pytest_asyncio.fixture(scope=LAYER, loop_scope="session")
async def moto(network: Network) -> AsyncIterator[Moto]:
    made = container(MOTO_IMAGE, network=network, aliases=("moto",), ports={MOTO_PORT: None})
    try:
        await asyncio.to_thread(made.start)
        server = Moto(made, url=f"http://127.0.0.1:{await asyncio.to_thread(host_port, made, MOTO_PORT)}")
        async with httpx.AsyncClient(timeout=2) as http:
            await eventually(lambda: _answers(http, f"{server.url}/moto-api/data.json"), 60, "moto's server")
        yield server
    finally:
        with contextlib.suppress(Exception):
            made.stop()


@pytest.fixture(scope=LAYER)
def keys_dir() -> Iterator[Path]:
    """One entry-token signing key for every ticketing container, readable by the image's user."""
    path = Path(tempfile.mkdtemp(prefix="waitroom-keys-"))
    key = path / "2026-11-01.pem"
    write_private_key(key)
    path.chmod(0o755)
    try:
        os.chown(key, IMAGE_UID, IMAGE_UID)
    except PermissionError:  # not root: a throwaway test key may be world-readable
        key.chmod(0o644)
    yield path
    for file in path.iterdir():
        file.unlink()
    path.rmdir()


@pytest.fixture(scope=LAYER)
def admin_on_own_port(engine: PodmanEngine) -> bool:
    """Whether the image serves the admin API on a listener of its own (WAITROOM_TICKETING_ADMIN_PORT)."""
    probe = container(
        APP_IMAGE,
        command=[
            "python",
            "-c",
            "from waitroom_ticketing.settings import TicketingSettings as S; print('admin_port' in S.model_fields)",
        ],
    )
    probe.start()
    try:
        assert probe.wait() == 0, logs_of(probe)
        return logs_of(probe).strip().endswith("True")
    finally:
        probe.stop()


async def _answers(http: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await http.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


# --- one test's services ------------------------------------------------------------------------


@dataclass
class Service:
    """One service container; ``kill`` and ``start_again`` are SIGKILL and a supervisor's restart."""

    name: str
    kind: str
    made: DockerContainer
    admin_on_own_port: bool = False
    urls: dict[int, str] = field(default_factory=dict)

    def _read_ports(self) -> None:
        ports = [HEALTH_PORTS[self.kind]] + ([API_PORT, ADMIN_PORT] if self.kind == "ticketing" else [])
        self.urls = {port: f"http://127.0.0.1:{host_port(self.made, port)}" for port in ports}

    @property
    def health_url(self) -> str:
        return self.urls[HEALTH_PORTS[self.kind]]

    @property
    def url(self) -> str:
        """Ticketing's public API."""
        return self.urls[API_PORT]

    @property
    def admin_url(self) -> str:
        """Ticketing's admin API: its own listener where the image has one, else the public one."""
        return self.urls[ADMIN_PORT] if self.admin_on_own_port else self.urls[API_PORT]

    async def ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        if not self.urls:
            await asyncio.to_thread(self._read_ports)
        async with httpx.AsyncClient(timeout=2) as http:
            await eventually(
                lambda: self._ready_or_fail(http), timeout, f"{self.name}'s /readyz", seen=lambda: self.status()
            )

    async def _ready_or_fail(self, http: httpx.AsyncClient) -> bool:
        if await _answers(http, f"{self.health_url}/readyz"):
            return True
        if self.status() == "exited":
            raise AssertionError(f"{self.name} exited:\n{tail_lines(self.logs(), 40)}")
        return False

    def status(self) -> str:
        wrapped = self.made.get_wrapped_container()
        wrapped.reload()
        return str(wrapped.status)

    def exit_code(self) -> int:
        wrapped = self.made.get_wrapped_container()
        wrapped.reload()
        return int(wrapped.attrs["State"]["ExitCode"])

    def kill(self) -> None:
        """``kill -9``: no shutdown, no commit, an open transaction left behind."""
        self.made.get_wrapped_container().kill(signal="SIGKILL")

    def start_again(self) -> None:
        """The same container started again: same settings, same published ports (read again)."""
        self.made.get_wrapped_container().start()
        self.urls = {}
        self._read_ports()

    def logs(self) -> str:
        return logs_of(self.made)


class Stack:
    """The service containers of one test, on the layer's network, under the test's own topic prefix."""

    def __init__(
        self, network: Network, kafka: KafkaNode, moto: Moto, keys_dir: Path, admin_on_own_port: bool, log_dir: Path
    ) -> None:
        self.network = network
        self.kafka = kafka
        self.moto = moto
        self.keys_dir = keys_dir
        self.admin_on_own_port = admin_on_own_port
        self.log_dir = log_dir
        self.topics: TopicRegistry = topic_registry(prefix=f"c{uuid4().hex[:8]}", room_partitions=3)
        self.services: list[Service] = []

    @property
    def prefix(self) -> str:
        return self.topics.commands.name.removesuffix(".commands")

    def _env(self, **extra: str) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.internal_bootstrap,
            "WAITROOM_TOPIC_PREFIX": self.prefix,
            "WAITROOM_ROOM_PARTITIONS": str(self.topics.commands.partitions),
            "WAITROOM_LOG_FORMAT": "json",
            "WAITROOM_LOG_LEVEL": "INFO",
            # No OTLP collector here: no console exporter filling the logs either.
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            **extra,
        }

    def start(self, kind: str, name: str | None = None, **extra: str) -> Service:
        """Starts ``python -m waitroom_<kind>`` (the image runs as uid 10001, WAITROOM_ENV=production,
        read-only root); ``await service.ready()`` waits for its /readyz."""
        name = name or f"{kind}-{len(self.services)}"
        env = self._env(**extra)
        ports: dict[int, int | None] = {HEALTH_PORTS[kind]: None}
        volumes: dict[str, str] = {}
        if kind == "ticketing":
            env = {
                "WAITROOM_TICKETING_ADMIN_TOKEN": ADMIN_TOKEN,
                "WAITROOM_TICKETING_TICKET_SECRET": TICKET_SECRET,
                "WAITROOM_TICKETING_JWT_KEYS_DIR": "/keys",
                "WAITROOM_TICKETING_JOIN_RATE_PER_IP": "0",  # every join comes from the host
                "WAITROOM_TICKETING_JOIN_WAIT_S": "10",
                "WAITROOM_TICKETING_ADMIN_HOST": "0.0.0.0",
                "WAITROOM_TICKETING_ADMIN_PORT": str(ADMIN_PORT),
                **env,
            }
            ports |= {API_PORT: None, ADMIN_PORT: None}
            volumes[str(self.keys_dir)] = "/keys"
        if kind == "notifier":
            env = {**self.moto.env(), **env}
        made = container(
            APP_IMAGE,
            command=["python", "-m", f"waitroom_{kind}"],
            env=env,
            network=self.network,
            aliases=(name,),
            ports=ports,
            volumes=volumes,
        )
        service = Service(name, kind, made, admin_on_own_port=self.admin_on_own_port)
        self.services.append(service)
        made.start()
        return service

    async def ready(self) -> None:
        await asyncio.gather(*(service.ready() for service in self.services))

    def save_logs(self) -> None:
        for service in self.services:
            (self.log_dir / f"{service.name}.log").write_text(service.logs())
        (self.log_dir / "kafka.log").write_text(self.kafka.logs())

    def print_tails(self) -> None:
        for service in self.services:
            print(f"----- {service.name} ({self.prefix}), last lines -----")  # noqa: T201 - failure report
            print(tail_lines(service.logs(), 30))  # noqa: T201
        print("----- kafka, last lines -----")  # noqa: T201
        print(tail_lines(self.kafka.logs(), 20))  # noqa: T201

    def remove_all(self) -> None:
        for service in self.services:
            with contextlib.suppress(Exception):
                service.made.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def stack(
    request: pytest.FixtureRequest,
    network: Network,
    kafka: KafkaNode,
    moto: Moto,
    keys_dir: Path,
    admin_on_own_port: bool,
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    # The Kafka container is shared: a test before may have restarted it.
    await wait_for_broker(kafka.bootstrap, timeout_s=60)
    made = Stack(network, kafka, moto, keys_dir, admin_on_own_port, tmp_path)
    await ensure_topics(kafka.bootstrap, made.topics.all())
    try:
        yield made
    finally:
        await asyncio.to_thread(made.save_logs)
        if request.node.stash.get(FAILED, False):
            made.print_tails()
        await asyncio.to_thread(made.remove_all)
