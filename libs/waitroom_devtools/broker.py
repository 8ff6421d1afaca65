"""The embedded Apache Kafka broker: a single-node KRaft cluster on loopback, run by the local Java.

Why embedded: the dev command and the integration tests need a real Kafka (transactions, consumer
groups, co-partitioned topics) without a container engine. The jars come from Maven Central once,
into a cache outside the repository; every broker then runs from a data directory of its own.

No orphan JVMs: a broker must never outlive whoever started it, however that process ends.

* a clean stop sends SIGTERM (Kafka's controlled shutdown) and SIGKILL after a timeout;
* the JVM runs in its own session, so Ctrl-C in a terminal reaches only Python, which stops the
  broker in order instead of both racing to die;
* ``atexit`` stops a broker the program forgot to stop;
* on Linux the JVM asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), which
  covers what no Python code can: the parent killed with ``kill -9`` or crashing.

Caveat of the last point: the kernel sends the signal when the *thread* that forked the JVM exits,
not the process. So the JVM is always spawned from the caller's thread (never a worker pool thread
that may be retired): start brokers from a thread that lives as long as they should.

Run ``python -m waitroom_devtools.broker`` for a broker with every registry topic created.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

import structlog

from waitroom_devtools.procs import die_with_parent, free_ports, signal_group, tail_lines

log = structlog.get_logger(__name__)

KAFKA_VERSION = "3.9.1"
SCALA_VERSION = "2.13"
SLF4J_VERSION = "1.7.36"
LOOPBACK = "127.0.0.1"
NODE_ID = 1

#: Kafka 4 drops protocol versions aiokafka may still use; 3.9 is the last line that keeps them.
_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>waitroom</groupId>
  <artifactId>embedded-kafka</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{SCALA_VERSION}</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <!-- the kafka artifact ships no logging backend: without one the broker is silent -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>{SLF4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""


class BrokerError(RuntimeError):
    """The embedded broker could not be fetched, formatted or started."""


# ---------------------------------------------------------------------------------------------
# jars


def cache_root() -> Path:
    """Where downloads are kept between runs: ``$WAITROOM_CACHE_DIR`` or ``~/.cache/waitroom``."""
    configured = os.environ.get("WAITROOM_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "waitroom"


def ensure_kafka_jars(cache_dir: Path | None = None) -> Path:
    """Return the folder of Kafka's runtime jars, fetching them from Maven Central the first time.

    Several processes may start brokers at once (pytest-xdist workers, the dev command next to a
    test run): a file lock lets one of them download while the others wait, and the download lands
    in a temporary folder renamed into place, so nobody ever sees half a set of jars.
    """
    root = cache_dir or cache_root()
    home = root / f"kafka-{KAFKA_VERSION}"
    libs = home / "libs"
    if _has_kafka_jars(libs):
        return libs
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"kafka-{KAFKA_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _has_kafka_jars(libs):  # another process fetched them while we waited for the lock
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                f"Maven ('mvn') is needed once to fetch Apache Kafka {KAFKA_VERSION} into {home}; "
                "install it (e.g. apt-get install maven) or set KAFKA_BOOTSTRAP_SERVERS to an existing cluster"
            )
        sys.stderr.write(f"fetching Apache Kafka {KAFKA_VERSION} from Maven Central (one time) ...\n")
        sys.stderr.flush()
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f".kafka-{KAFKA_VERSION}-", dir=root))
        try:
            (staging / "pom.xml").write_text(_POM)
            result = subprocess.run(
                [mvn, "-q", "-B", "dependency:copy-dependencies", "-DoutputDirectory=libs", "-DincludeScope=runtime"],
                cwd=staging,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0 or not _has_kafka_jars(staging / "libs"):
                raise BrokerError(
                    f"fetching Apache Kafka {KAFKA_VERSION} with Maven failed (exit {result.returncode}):\n"
                    + tail_lines(result.stdout + result.stderr, 40)
                )
            if home.exists():  # a leftover without jars (an interrupted manual copy): replace it
                shutil.rmtree(home)
            staging.rename(home)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        jars = len(list(libs.glob("*.jar")))
        sys.stderr.write(f"fetched {jars} jars in {time.monotonic() - started:.0f} s into {libs}\n")
        log.info("kafka_jars_fetched", jars=jars, path=str(libs))
        return libs


def _has_kafka_jars(libs: Path) -> bool:
    return (libs / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar").is_file()


# ---------------------------------------------------------------------------------------------
# the broker


class EmbeddedKafka:
    """A single-node KRaft Kafka on 127.0.0.1, its data in ``data_dir``.

    ``start()``/``stop()`` (or ``with``/``async with``) run it. The data directory is formatted on
    first use and kept afterwards, so a broker restarted on the same directory keeps its records;
    the listener ports are chosen anew at every start unless ``port`` is given (a single node may
    change ports across restarts). Tests give each broker a fresh temporary directory.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None = None,
        heap: str = "512m",
        startup_timeout_s: float = 90.0,
        stop_timeout_s: float = 20.0,
        cache_dir: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.requested_port = port
        self.heap = heap
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.cache_dir = cache_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._controller_port: int | None = None
        self._libs: Path | None = None

    # -- files in the data directory; the names say what an operator will find there

    @property
    def log_dir(self) -> Path:
        """Kafka's own data (``log.dirs``): the partitions and the KRaft metadata log."""
        return self.data_dir / "kraft-data"

    @property
    def broker_log(self) -> Path:
        """The broker's log4j output, warnings and errors only."""
        return self.data_dir / "broker.log"

    @property
    def console_log(self) -> Path:
        """The JVM's stdout/stderr: where a JVM that fails before log4j is up says why."""
        return self.data_dir / "broker.out"

    @property
    def server_properties(self) -> Path:
        return self.data_dir / "server.properties"

    # -- state

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:<port>`` of the running broker."""
        if self._port is None or self._process is None:
            raise BrokerError("the embedded broker is not running")
        return f"{LOOPBACK}:{self._port}"

    @property
    def pid(self) -> int | None:
        """The JVM's process id while it runs (it leads its own process group)."""
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle

    def start(self) -> str:
        """Start the broker and return its bootstrap address once it serves metadata."""
        self._prepare()
        self._spawn()
        try:
            self._wait_until_ready()
        except BaseException:  # Ctrl-C while booting too: no half-started JVM is left behind
            self.stop()
            raise
        return self.bootstrap_servers

    async def astart(self) -> str:
        """``start()`` without blocking the event loop while the broker boots.

        Fetching and formatting run in a worker thread; the JVM itself is spawned from the
        calling thread, because its parent-death signal is tied to the thread that forked it.
        """
        await asyncio.to_thread(self._prepare)
        self._spawn()
        try:
            await asyncio.to_thread(self._wait_until_ready)
        except BaseException:  # cancelled or failed: no half-started JVM is left behind
            self.stop()
            raise
        return self.bootstrap_servers

    def stop(self) -> None:
        """Stop the broker: SIGTERM for a controlled shutdown, SIGKILL if it takes too long.

        Safe to call twice, and safe to interrupt: a second Ctrl-C during the shutdown kills the JVM
        instead of leaving it behind.
        """
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                log.info("kafka_stopping", pid=process.pid)
                signal_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("kafka_stop_timeout_killing", pid=process.pid, timeout_s=self.stop_timeout_s)
        finally:
            if process.poll() is None:
                signal_group(process.pid, signal.SIGKILL)
                process.wait()
            # The group may still hold a straggler if the JVM ever forks; it must not survive.
            signal_group(process.pid, signal.SIGKILL)
            self._process = None
            atexit.unregister(self.stop)
            log.info("kafka_stopped", pid=process.pid, exit_code=process.returncode)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Block until the JVM exits (the CLI runs on this); its exit code, None on timeout."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()

    # -- steps

    def _prepare(self) -> None:
        """Jars, ports, configuration and (first time only) the formatted log directory."""
        if self.is_running():
            raise BrokerError(f"the embedded broker in {self.data_dir} is already running")
        java = shutil.which("java")
        if java is None:
            raise BrokerError(
                "the embedded Kafka needs Java 17+ ('java' is not on PATH); install a JRE "
                "(e.g. apt-get install openjdk-17-jre-headless) or set KAFKA_BOOTSTRAP_SERVERS"
            )
        self._libs = ensure_kafka_jars(self.cache_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.requested_port is not None:
            # Kafka would find out too, but only after ~10 s of start-up and a page of stack traces.
            _require_free_port(self.requested_port)
            self._port, self._controller_port = self.requested_port, free_ports(1)[0]
        else:
            self._port, self._controller_port = free_ports(2)
        self.server_properties.write_text(_server_properties(self._port, self._controller_port, self.log_dir))
        (self.data_dir / "log4j.properties").write_text(_log4j_properties(self.broker_log))
        if not (self.log_dir / "meta.properties").exists():
            self._format()

    def _java(self, jvm_options: list[str], main_class: str, *args: str) -> list[str]:
        assert self._libs is not None
        return [
            "java",
            *jvm_options,
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}",
            "-cp",
            f"{self._libs}/*",
            main_class,
            *args,
        ]

    def _format(self) -> None:
        """Write the KRaft metadata for a new single-node cluster into ``log_dir``."""
        cluster_id = _random_cluster_id()
        started = time.monotonic()
        result = subprocess.run(
            self._java(
                # A one-second tool: optimising JIT and a concurrent collector only cost start-up time.
                ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"],
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.server_properties),
            ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BrokerError(
                f"formatting {self.log_dir} failed (exit {result.returncode}):\n"
                + tail_lines(result.stdout + result.stderr, 40)
            )
        log.info(
            "kafka_formatted",
            cluster_id=cluster_id,
            log_dir=str(self.log_dir),
            seconds=round(time.monotonic() - started, 2),
        )

    def _spawn(self) -> None:
        # The JVM keeps its own copy of the file descriptor; ours can close at once.
        # The heap is fixed at start, as Kafka's own start script does (-Xms = -Xmx), and touched
        # at once: the broker's footprint is then what it will stay, instead of a JVM growing
        # towards its cap in steps over the first half hour (the soak saw +33 % in one step).
        heap = [f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+AlwaysPreTouch", "-XX:+UseG1GC"]
        with open(self.console_log, "wb") as console:
            self._process = subprocess.Popen(
                self._java(heap, "kafka.Kafka", str(self.server_properties)),
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                # Own session: a terminal's Ctrl-C goes to Python only, which then stops Kafka in order.
                start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()),
            )
        atexit.register(self.stop)
        log.info("kafka_spawned", pid=self._process.pid, port=self._port, data_dir=str(self.data_dir))

    def _wait_until_ready(self) -> None:
        """Poll until the broker lists itself in a metadata response, i.e. it is unfenced and serving.

        A raw Metadata request keeps this synchronous and client-free; between polls we check the
        JVM is still alive, so a broker that dies early fails at once with its own words.
        """
        # Locals, not attributes: if astart() is cancelled, stop() clears the attributes while this
        # thread (which cannot be cancelled) still runs; it then sees the JVM gone and ends.
        process, port = self._process, self._port
        assert process is not None and port is not None
        started = time.monotonic()
        deadline = started + self.startup_timeout_s
        while True:
            code = process.poll()
            if code is not None:
                self._fail(f"the embedded Kafka exited with code {code} while starting")
            if _serves_metadata(LOOPBACK, port):
                log.info(
                    "kafka_ready",
                    bootstrap_servers=f"{LOOPBACK}:{port}",
                    seconds=round(time.monotonic() - started, 2),
                )
                return
            if time.monotonic() > deadline:
                self._fail(f"the embedded Kafka did not answer within {self.startup_timeout_s:.0f} s")
            time.sleep(0.1)

    def _fail(self, reason: str) -> None:
        self.stop()
        raise BrokerError(f"{reason} (data dir {self.data_dir}).\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The end of the JVM console and of the broker log, for error messages.

        Java stack frames are left out: a failed start logs a long chain of them, and the lines
        that say what went wrong (the messages and their ``Caused by``) would scroll out of view.
        """
        parts = []
        for path in (self.console_log, self.broker_log):
            if path.exists():
                text = "\n".join(
                    line
                    for line in path.read_text(errors="replace").splitlines()
                    if not line.lstrip().startswith(("at ", "... "))
                )
                parts.append(f"--- {path} ---\n{tail_lines(text, lines) or '(empty)'}")
        return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# helpers


def _server_properties(port: int, controller_port: int, log_dir: Path) -> str:
    return "\n".join(
        [
            "# written by waitroom_devtools.broker at every start; edits are overwritten",
            "process.roles=broker,controller",
            f"node.id={NODE_ID}",
            f"controller.quorum.voters={NODE_ID}@{LOOPBACK}:{controller_port}",
            f"listeners=PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
            f"advertised.listeners=PLAINTEXT://{LOOPBACK}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={log_dir}",
            "num.partitions=1",
            # Topics come from the registry only: a typo in a topic name must fail, not create a topic.
            "auto.create.topics.enable=false",
            # A single node: internal topics cannot have more replicas than that.
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            # 10 instead of 50 partitions: creating the internal topics dominates start-up on 2 cores.
            "offsets.topic.num.partitions=10",
            "transaction.state.log.num.partitions=10",
            # Consumers in tests and the dev stack should not wait 3 s for a group to settle.
            "group.initial.rebalance.delay.ms=0",
            # The sequencers' session timeout is 3 s (failover in under 5 s, docs/adr/0007); the
            # broker's default floor of 6 s would refuse it. 1 s still refuses a typo of 10 ms.
            "group.min.session.timeout.ms=1000",
            "",
        ]
    )


def _log4j_properties(log_file: Path) -> str:
    return "\n".join(
        [
            "log4j.rootLogger=WARN, file",
            "log4j.appender.file=org.apache.log4j.RollingFileAppender",
            f"log4j.appender.file.File={log_file}",
            "log4j.appender.file.MaxFileSize=10MB",
            "log4j.appender.file.MaxBackupIndex=2",
            "log4j.appender.file.layout=org.apache.log4j.PatternLayout",
            "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n",
            "",
        ]
    )


def _random_cluster_id() -> str:
    """A Kafka ``Uuid`` in its string form: 16 random bytes, base64url, no padding.

    Made here rather than by ``StorageTool random-uuid`` to save a JVM start. Like Kafka's own
    generator it never starts with '-', which a command line would read as an option.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _require_free_port(port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError as error:
            raise BrokerError(f"port {port} on {LOOPBACK} is not free: {error.strerror}") from error


def _serves_metadata(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether a Metadata v1 request lists at least one live broker.

    A fenced or still-starting broker either refuses the connection, closes it, or leaves itself
    out of the broker list; only a broker that can take produce and admin requests lists itself.
    """
    client_id = b"waitroom-probe"
    body = struct.pack(">hhih", 3, 1, 1, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
            response = _recv_exactly(sock, size)
    except OSError:
        return False
    correlation_id, brokers = struct.unpack_from(">ii", response)
    return correlation_id == 1 and brokers > 0


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        chunks += chunk
    return bytes(chunks)


# ---------------------------------------------------------------------------------------------
# CLI


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m waitroom_devtools.broker",
        description="Run a single-node Apache Kafka on 127.0.0.1 with every waitroom topic created.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("var/kafka"),
        help="kept between runs, so records survive a restart (default: var/kafka)",
    )
    parser.add_argument("--port", type=int, default=None, help="listener port (default: any free port)")
    parser.add_argument("--prefix", default="waitroom", help="topic name prefix (default: waitroom)")
    parser.add_argument("--partitions", type=int, default=12, help="partitions of each room topic (default: 12)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the broker, create the registry's topics, print the bootstrap address, run until stopped."""
    from waitroom_events.topics import topic_registry
    from waitroom_platform.admin import ensure_topics
    from waitroom_platform.logging import configure_logging

    args = _parse_args(argv)
    configure_logging(level="INFO", fmt="console", service="kafka")
    registry = topic_registry(args.prefix, args.partitions)

    def terminate(signum: int, frame: FrameType | None) -> None:
        # SIGTERM (docker stop, systemd, a supervisor) and SIGHUP (the terminal closed) unwind like
        # Ctrl-C: through broker.stop(), so Kafka shuts down in order.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    # Explicitly, because a shell starting us in the background (`&`) passes SIGINT on as ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    broker = EmbeddedKafka(args.data_dir, port=args.port)
    try:
        with broker:
            asyncio.run(ensure_topics(broker.bootstrap_servers, registry.all()))
            sys.stdout.write(f"{broker.bootstrap_servers}\n")
            sys.stdout.flush()
            sys.stderr.write(
                f"Kafka {KAFKA_VERSION} ready at {broker.bootstrap_servers} with {len(registry.all())} "
                f"'{args.prefix}' topics; data in {broker.data_dir}. Ctrl-C stops it.\n"
            )
            code = broker.wait()
            sys.stderr.write(f"Kafka exited on its own (code {code}); see {broker.broker_log}\n")
            return 1
    except KeyboardInterrupt:
        return 130
    except BrokerError as error:
        sys.stderr.write(f"{error}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
