"""Containers for tests: testcontainers-python on podman's Docker-compatible API.

:class:`PodmanEngine` gives testcontainers an engine: the one ``DOCKER_HOST`` names, if it answers,
or else a ``podman system service`` of its own on a socket in a temporary folder, started here and
stopped (after every container and network this session made is removed) when the engine closes.
:class:`KafkaNode` is the project's Kafka image (``localhost/waitroom-kafka``, built by
``images/build.sh``) with a listener on a host port, and optionally a second one for containers
on a podman network. Used by the ``containers`` test layer and by ``WAITROOM_TEST_BROKER=testcontainers``.

Podman on these machines needs the runc runtime and explicit ulimits (docs/images.md): the service
is started with ``--runtime runc`` and every container gets the limits.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from waitroom_devtools.broker import KAFKA_VERSION
from waitroom_devtools.procs import free_port

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
#: what runc accepts here (the host's hard limit is lower than podman's default ask)
ULIMITS = {"nofile": 1024, "nproc": 1024}


def _version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def _moto_version() -> str:
    found = re.search(r"MOTO_VERSION=\$\{WAITROOM_MOTO_VERSION:-([^}]+)\}", (REPO / "images/build.sh").read_text())
    assert found, "images/build.sh names no MOTO_VERSION"
    return found.group(1)


# The tags images/build.sh gives (and the same variables to change them).
APP_IMAGE = os.environ.get("WAITROOM_APP_IMAGE") or f"localhost/waitroom:{_version()}"
KAFKA_IMAGE = os.environ.get("WAITROOM_KAFKA_IMAGE") or f"localhost/waitroom-kafka:{KAFKA_VERSION}"
MOTO_IMAGE = os.environ.get("WAITROOM_MOTO_IMAGE") or f"localhost/waitroom-moto:{_moto_version()}"


#: the app image's build context (.containerignore): what the label org.waitroom.source hashes
SOURCE_ROOTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "libs", "services", "images/requirements.py")
SOURCE_LABEL = "org.waitroom.source"


def source_key() -> str:
    """images/build.sh's ``source_key``: sha256 of ``sha256sum`` lines of every context file, sorted."""
    files: list[str] = []
    for root in SOURCE_ROOTS:
        top = REPO / root
        if top.is_file():
            files.append(root)
        for folder, dirs, names in os.walk(top):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not d.endswith(".egg-info")]
            for name in names:
                path = Path(folder) / name
                if not name.endswith((".pyc", ".pyo")) and path.is_file() and not path.is_symlink():
                    files.append(path.relative_to(REPO).as_posix())
    lines = "".join(f"{hashlib.sha256((REPO / f).read_bytes()).hexdigest()}  {f}\n" for f in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


class EngineUnavailable(RuntimeError):
    """No container engine: podman missing, or its service would not start."""


def _pings(docker_host: str, timeout_s: float = 2.0) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=docker_host, timeout=timeout_s)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - any failure means "not there"
        return False
    finally:
        client.close()


def engine_missing_reason() -> str | None:
    """Why there can be no engine here, or None. Only a missing podman for a non-root user is a reason."""
    if os.environ.get("DOCKER_HOST") or shutil.which("podman"):
        return None
    if os.geteuid() == 0:
        return None  # root can install it: the layer must not skip (make containers installs podman)
    return "podman is not installed and this is not root: `make containers` as root installs it (apt)"


class PodmanEngine:
    """A Docker-compatible engine for testcontainers, for one session (a context manager)."""

    def __init__(self) -> None:
        self.docker_host = ""
        self.started_service = False
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._saved_env: dict[str, str | None] = {}
        self.client: Any = None

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> PodmanEngine:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        given = os.environ.get("DOCKER_HOST", "")
        if given and _pings(given):
            self.docker_host = given
        else:
            if shutil.which("podman") is None:
                raise EngineUnavailable(
                    "podman is not installed: run `make containers` (images/build.sh installs podman, runc and "
                    "debootstrap with apt) or point DOCKER_HOST at a Docker-compatible engine"
                )
            self._start_service()
        self._configure_testcontainers()
        import docker

        self.client = docker.DockerClient(base_url=self.docker_host, timeout=120)

    def _start_service(self) -> None:
        # A socket of our own: another session's service (or a system one) is never stopped by us.
        self._dir = Path(tempfile.mkdtemp(prefix="waitroom-podman-"))
        socket_path = self._dir / "podman.sock"
        self.docker_host = f"unix://{socket_path}"
        runtime = ["--runtime", "runc"] if shutil.which("runc") else []
        log = (self._dir / "service.log").open("wb")
        self._process = subprocess.Popen(
            ["podman", *runtime, "system", "service", "--time=0", self.docker_host],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.started_service = True
        deadline = time.monotonic() + 30
        while not _pings(self.docker_host, timeout_s=1):
            if self._process.poll() is not None or time.monotonic() > deadline:
                output = (self._dir / "service.log").read_text(errors="replace")[-2000:]
                raise EngineUnavailable(f"podman system service did not answer on {socket_path}:\n{output}")
            time.sleep(0.1)

    def _configure_testcontainers(self) -> None:
        wanted = {
            "DOCKER_HOST": self.docker_host,
            "TESTCONTAINERS_RYUK_DISABLED": "true",  # no reaper container: we remove what we made
            "TESTCONTAINERS_CONNECTION_MODE": "docker_host",
        }
        for name, value in wanted.items():
            self._saved_env[name] = os.environ.get(name)
            os.environ[name] = value
        # testcontainers reads some settings once, at import: set them on its config too.
        from testcontainers.core.config import ConnectionMode
        from testcontainers.core.config import testcontainers_config as config

        config.ryuk_disabled = True
        config.connection_mode_override = ConnectionMode.docker_host

    def close(self) -> None:
        """Remove what this session made, then stop the service if it is ours."""
        if self.client is not None:
            self.remove_leftovers()
            self.client.close()
            self.client = None
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=5)
            self._process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}

    def remove_leftovers(self) -> None:
        """Containers (with their volumes) and networks labelled with this session's testcontainers id."""
        from testcontainers.core.labels import LABEL_SESSION_ID, SESSION_ID

        label = f"{LABEL_SESSION_ID}={SESSION_ID}"
        for container in self.client.containers.list(all=True, filters={"label": label}):
            with contextlib.suppress(Exception):
                container.remove(force=True, v=True)
        for network in self.client.networks.list(filters={"label": label}):
            with contextlib.suppress(Exception):
                network.remove()

    # --- what tests use ------------------------------------------------------------------------

    def require_images(self, *images: str) -> None:
        missing = [image for image in images if not self.client.images.list(name=image)]
        if missing:
            raise EngineUnavailable(
                f"images missing: {', '.join(missing)}; build them with `make containers` (images/build.sh all)"
            )

    def require_current_app_image(self) -> None:
        """The app image must hold the working tree's code (unless WAITROOM_APP_IMAGE names another)."""
        if os.environ.get("WAITROOM_APP_IMAGE"):
            return
        labels = self.client.images.get(APP_IMAGE).labels or {}
        built_from, here = labels.get(SOURCE_LABEL), source_key()
        if built_from != here:
            raise EngineUnavailable(
                f"{APP_IMAGE} was built from other sources ({SOURCE_LABEL}={built_from}) than the working "
                f"tree's ({here}): rebuild it with `make containers` (images/build.sh all)"
            )

    def network(self) -> Network:
        from testcontainers.core.network import Network

        return Network().create()


def container(
    image: str,
    *,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    network: Network | None = None,
    aliases: tuple[str, ...] = (),
    ports: dict[int, int | None] | None = None,
    read_only: bool = True,
    volumes: dict[str, str] | None = None,
) -> DockerContainer:
    """A container not yet started: ports published on loopback only (None: any free host port),
    the runc-friendly ulimits, a read-only root with a tmpfs on /tmp by default."""
    from docker.types import Ulimit
    from testcontainers.core.container import DockerContainer

    made = DockerContainer(
        image,
        command=command,  # an argv list: testcontainers hands it to docker-py as is
        env=dict(env or {}),
        ulimits=[Ulimit(name=name, soft=value, hard=value) for name, value in ULIMITS.items()],
        read_only=read_only,
    )
    if network is not None:
        made.with_network(network)
        if aliases:
            made.with_network_aliases(*aliases)
    for inside, outside in (ports or {}).items():
        # docker-py's (host ip, host port) form: published on loopback only, never on every interface.
        made.ports[f"{inside}/tcp"] = (LOOPBACK, outside) if outside else (LOOPBACK,)
    if read_only:
        made.tmpfs["/tmp"] = "rw,nosuid,nodev,size=64m,mode=1777"
    for host, inside in (volumes or {}).items():
        made.with_volume_mapping(host, inside, "ro")
    return made


def host_port(made: DockerContainer, port: int) -> int:
    """The host port a running container's port is published on (read again: a restart may change it)."""
    wrapped = made.get_wrapped_container()
    wrapped.reload()
    bindings = ((wrapped.attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []
    if not bindings:
        raise AssertionError(f"port {port} of {wrapped.name} is not published (it is {wrapped.status})")
    return int(bindings[0]["HostPort"])


def logs_of(made: DockerContainer) -> str:
    try:
        out = made.get_wrapped_container().logs(stdout=True, stderr=True)
    except Exception as exc:  # noqa: BLE001 - logs are for failure reports, never a failure themselves
        return f"(no logs: {exc})"
    return bytes(out).decode(errors="replace")


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback test URL
            return bool(response.status == 200)
    except OSError:
        return False


class KafkaNode:
    """The project's single-node KRaft image, reachable from the host on ``bootstrap``.

    With a network, containers on it reach the same broker as ``<alias>:9092`` (a second listener,
    advertised under the alias). The host port is chosen before the start, because the broker must
    advertise it; the container listens on the same number, published on loopback.
    """

    INTERNAL_PORT = 9092

    def __init__(self, network: Network | None = None, alias: str = "kafka", **env: str) -> None:
        self.network = network
        self.alias = alias
        self.extra_env = env
        self.port = 0
        self.made: DockerContainer | None = None

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def internal_bootstrap(self) -> str:
        return f"{self.alias}:{self.INTERNAL_PORT}"

    def _env(self) -> dict[str, str]:
        if self.network is None:
            env = {"KAFKA_PORT": str(self.port), "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{self.bootstrap}"}
        else:
            env = {
                "KAFKA_LISTENERS": f"PLAINTEXT://:{self.INTERNAL_PORT},EXTERNAL://:{self.port},CONTROLLER://127.0.0.1:9093",
                "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{self.internal_bootstrap},EXTERNAL://{self.bootstrap}",
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,EXTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            }
        return {**env, **self.extra_env}

    def start(self) -> KafkaNode:
        from docker.errors import APIError

        for attempt in range(3):
            self.port = free_port()
            self.made = container(
                KAFKA_IMAGE,
                env=self._env(),
                network=self.network,
                aliases=(self.alias,) if self.network is not None else (),
                ports={self.port: self.port},
            )
            try:
                self.made.start()
                return self
            except APIError as exc:
                # The free port was taken between choosing and binding it: choose another.
                self.stop()
                if attempt == 2 or "address already in use" not in str(exc).lower():
                    raise
        raise AssertionError("unreachable")

    def restart(self, timeout_s: int = 30) -> None:
        """``podman restart``: SIGTERM (Kafka's controlled shutdown), then the same container again."""
        assert self.made is not None
        self.made.get_wrapped_container().restart(timeout=timeout_s)

    def logs(self) -> str:
        return logs_of(self.made) if self.made is not None else ""

    def stop(self) -> None:
        if self.made is not None:
            with contextlib.suppress(Exception):
                self.made.stop()  # removes the container and its volume
            self.made = None


@contextlib.contextmanager
def kafka_container() -> Iterator[str]:
    """``WAITROOM_TEST_BROKER=testcontainers``: an engine, the project's Kafka on a host port; its bootstrap."""
    with PodmanEngine() as engine:
        engine.require_images(KAFKA_IMAGE)
        node = KafkaNode().start()
        try:
            yield node.bootstrap
        finally:
            node.stop()
