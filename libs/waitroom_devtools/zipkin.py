"""A local Zipkin server, the dev stack's trace UI: the jar from Maven Central, run by the local Java.

Why Zipkin (docs/adr/0006-tracing-ui.md): one self-contained jar on Maven Central, the registry
this project already fetches Kafka from, in-memory storage, a UI that finds a trace by any tag.
Zipkin takes only its own span format; :mod:`waitroom_devtools.otlp_receiver` converts OTLP for it.

Like the embedded Kafka, the server never outlives whoever started it: SIGTERM then SIGKILL on
``stop()``, ``atexit``, and ``PR_SET_PDEATHSIG`` for a parent killed with ``kill -9``. It listens
on 127.0.0.1 only, with no collector but HTTP (whatever ``KAFKA_*``, ``RABBIT_*`` the caller's
environment holds, Zipkin gets a clean one, so its Kafka collector cannot switch itself on).
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog

from waitroom_devtools.broker import cache_root
from waitroom_devtools.otlp_receiver import OtlpReceiver
from waitroom_devtools.procs import die_with_parent, free_port, signal_group, tail_lines

log = structlog.get_logger(__name__)

ZIPKIN_VERSION = "3.5.1"
ZIPKIN_ARTIFACT = f"io.zipkin:zipkin-server:{ZIPKIN_VERSION}:jar:exec"
LOOPBACK = "127.0.0.1"

#: The caller's variables Zipkin may see; anything else (KAFKA_BOOTSTRAP_SERVERS above all) is left out.
_PASSED_ENV = ("PATH", "HOME", "JAVA_HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")


class ZipkinError(RuntimeError):
    """Zipkin could not be fetched or started."""


def ensure_zipkin_jar(cache_dir: Path | None = None) -> Path:
    """The Zipkin server's executable jar, fetched from Maven Central with ``mvn`` the first time.

    Same discipline as the Kafka jars: a file lock so one process downloads while others wait, and a
    download into a temporary folder renamed into place, so nobody runs half a jar.
    """
    root = cache_dir or cache_root()
    jar = root / f"zipkin-{ZIPKIN_VERSION}" / f"zipkin-server-{ZIPKIN_VERSION}-exec.jar"
    if jar.is_file():
        return jar
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"zipkin-{ZIPKIN_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if jar.is_file():
            return jar
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ZipkinError(f"Maven ('mvn') is needed once to fetch Zipkin {ZIPKIN_VERSION}; apt-get install maven")
        sys.stderr.write(f"fetching Zipkin {ZIPKIN_VERSION} from Maven Central (one time, ~130 MB) ...\n")
        sys.stderr.flush()
        staging = Path(tempfile.mkdtemp(prefix=f".zipkin-{ZIPKIN_VERSION}-", dir=root))
        try:
            result = subprocess.run(
                [mvn, "-q", "-B", "dependency:copy", f"-Dartifact={ZIPKIN_ARTIFACT}", f"-DoutputDirectory={staging}"],
                cwd=staging,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
            )
            fetched = staging / jar.name
            if result.returncode != 0 or not fetched.is_file():
                raise ZipkinError(
                    f"mvn could not fetch {ZIPKIN_ARTIFACT}:\n{tail_lines(result.stdout + result.stderr, 20)}"
                )
            target = staging / "home"
            target.mkdir()
            fetched.rename(target / jar.name)
            if jar.parent.exists():
                shutil.rmtree(jar.parent)
            target.rename(jar.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return jar


class ZipkinServer:
    """Zipkin with in-memory storage on ``127.0.0.1:<port>`` (any free port unless given)."""

    def __init__(
        self,
        log_file: Path,
        *,
        port: int | None = None,
        heap: str = "256m",
        max_spans: int = 200_000,
        startup_timeout_s: float = 120.0,
        cache_dir: Path | None = None,
    ) -> None:
        self.log_file = log_file
        self.requested_port = port
        self.heap = heap
        self.max_spans = max_spans
        self.startup_timeout_s = startup_timeout_s
        self.cache_dir = cache_dir
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise ZipkinError("Zipkin is not running")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def command(self, jar: Path, port: int) -> list[str]:
        java_home = os.environ.get("JAVA_HOME")
        return [
            os.path.join(java_home, "bin", "java") if java_home else "java",
            f"-Xmx{self.heap}",
            "-Xms64m",
            "-XX:+UseSerialGC",  # one small heap on a 2-core machine: no parallel collector threads
            "-XX:TieredStopAtLevel=1",  # starts in about half the time; Zipkin's load here is tiny
            "-jar",
            str(jar),
            # Spring Boot replaces a list as a whole: the port entry is given complete, bound to loopback.
            f"--armeria.ports[0].ip={LOOPBACK}",
            f"--armeria.ports[0].port={port}",
            "--armeria.ports[0].protocols[0]=http",
        ]

    def environment(self, port: int) -> dict[str, str]:
        env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
        env.update(
            QUERY_PORT=str(port),
            STORAGE_TYPE="mem",
            MEM_MAX_SPANS=str(self.max_spans),
            COLLECTOR_GRPC_ENABLED="false",
            COLLECTOR_KAFKA_ENABLED="false",
            COLLECTOR_RABBITMQ_ENABLED="false",
            COLLECTOR_ACTIVEMQ_ENABLED="false",
            COLLECTOR_PULSAR_ENABLED="false",
            SELF_TRACING_ENABLED="false",
        )
        return env

    def start(self) -> str:
        """Start Zipkin and return its URL once it answers ``/health``."""
        jar = ensure_zipkin_jar(self.cache_dir)
        port = self.requested_port or free_port()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "wb") as console:
            self._process = subprocess.Popen(
                self.command(jar, port),
                env=self.environment(port),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches Python, which stops Zipkin in order
                preexec_fn=die_with_parent(os.getpid()),
            )
        self.port = port
        atexit.register(self.stop)
        log.info("zipkin_spawned", pid=self._process.pid, port=port)
        self._wait_until_ready()
        return self.url

    def _wait_until_ready(self) -> None:
        process = self._process
        assert process is not None
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                self.stop()
                raise ZipkinError(f"Zipkin exited with {process.returncode} while starting:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:  # noqa: S310 - loopback
                    if response.status == 200:
                        log.info("zipkin_ready", url=self.url, seconds=round(time.monotonic() - started, 1))
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() - started > self.startup_timeout_s:
                self.stop()
                raise ZipkinError(f"Zipkin did not answer within {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, SIGKILL after ``timeout_s``; safe to call twice."""
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                signal_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("zipkin_stop_timeout_killing", pid=process.pid)
        finally:
            if process.poll() is None:
                signal_group(process.pid, signal.SIGKILL)
                process.wait()
            self._process = None
            atexit.unregister(self.stop)
            log.info("zipkin_stopped", pid=process.pid, exit_code=process.returncode)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return tail_lines(self.log_file.read_text(errors="replace"), lines)
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class TraceUI:
    """The dev stack's trace UI: Zipkin, and the OTLP receiver bridging the services' OTLP to it.

    ``otel_env()`` is what every service then gets: OTLP/HTTP to the bridge, spans exported every
    half second (the SDK's 5 s default makes a trace look incomplete right after a click).
    """

    def __init__(self, data_dir: Path) -> None:
        self.zipkin = ZipkinServer(data_dir / "logs" / "zipkin.log")
        self.receiver: OtlpReceiver | None = None

    def start(self) -> str:
        """Start both; the Zipkin UI's URL."""
        self.zipkin.start()
        # The bridge keeps few spans itself: Zipkin is where they are looked at.
        self.receiver = OtlpReceiver(zipkin_url=self.zipkin.url, max_items=10_000).start()
        return self.ui_url

    @property
    def ui_url(self) -> str:
        return f"{self.zipkin.url}/zipkin/"

    def otel_env(self) -> dict[str, str]:
        assert self.receiver is not None, "start() first"
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_BSP_SCHEDULE_DELAY": "500",
            "OTEL_METRIC_EXPORT_INTERVAL": "15000",
        }

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None
        self.zipkin.stop()
