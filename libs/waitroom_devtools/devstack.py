"""The dev command: the whole waitroom on one machine, ``waitroom-dev`` (or ``python -m waitroom_devtools.devstack``).

Starts Apache Kafka (embedded, unless ``KAFKA_BOOTSTRAP_SERVERS`` names a cluster), creates the
topics, starts every service as a child process, creates a demo room (through the ticketing
service's admin listener) and prints the URLs, the admin API's on its own line. Data
(Kafka's log, signing keys, service logs) stays in ``--data-dir`` between runs. Ctrl-C stops
everything in order; a service that crashes is restarted. Children die with this process even
after ``kill -9`` (PR_SET_PDEATHSIG), so nothing is left behind.

Services are listed in :data:`SERVICES`; each entry says how to run it and what environment it gets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from waitroom_devtools.broker import EmbeddedKafka
from waitroom_devtools.procs import ServiceProcess, free_port
from waitroom_devtools.zipkin import TraceUI
from waitroom_platform.admin import ensure_topics, wait_for_broker

DEV_ADMIN_TOKEN = "dev-admin-token"  # noqa: S105 - the development default, refused outside development


@dataclass
class DevContext:
    """What the stack has decided, handed to every service entry."""

    data_dir: Path
    bootstrap: str
    prefix: str
    partitions: int
    api_port: int
    #: the ticketing service's admin listener (``/v1/admin/...`` and the API docs)
    admin_port: int = 8001
    ports: dict[str, int] = field(default_factory=dict)
    #: OpenTelemetry settings for every service (see :func:`telemetry_env`)
    otel_env: dict[str, str] = field(default_factory=dict)

    def port(self, name: str) -> int:
        """A port for ``name``, free at first use and then kept for the life of the stack."""
        if name not in self.ports:
            self.ports[name] = free_port()
        return self.ports[name]

    def base_env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "WAITROOM_ENV": "development",
            "WAITROOM_TOPIC_PREFIX": self.prefix,
            "WAITROOM_ROOM_PARTITIONS": str(self.partitions),
            "WAITROOM_LOG_FORMAT": "json",
            **self.otel_env,
        }


@dataclass(frozen=True)
class DevService:
    name: str
    module: str
    env: Callable[[DevContext], dict[str, str]]
    #: path answered with 200 once the service is ready (on ``port_of(ctx)``), or None
    ready_path: str | None = None
    port_of: Callable[[DevContext], int] | None = None
    args: Callable[[DevContext], tuple[str, ...]] = lambda ctx: ()
    #: shown to the person running the stack
    urls: Callable[[DevContext], dict[str, str]] = lambda ctx: {}


def _ticketing_env(ctx: DevContext) -> dict[str, str]:
    keys = ctx.data_dir / "jwt-keys"
    return {
        "WAITROOM_TICKETING_PORT": str(ctx.api_port),
        "WAITROOM_TICKETING_ADMIN_PORT": str(ctx.admin_port),
        "WAITROOM_TICKETING_HEALTH_PORT": str(ctx.port("ticketing health")),
        "WAITROOM_TICKETING_JWT_KEYS_DIR": str(keys),
    }


def _ticketing_urls(ctx: DevContext) -> dict[str, str]:
    base = f"http://127.0.0.1:{ctx.api_port}"
    admin = admin_url(ctx)
    return {
        "API": base,
        "admin API": admin,
        "operator console": f"{admin}/admin",
        "API docs (Swagger)": f"{admin}/docs",
        "public API docs": f"{admin}/docs/public",
        "demo waiting page": f"{base}/wait/demo",
        "demo room status": f"{base}/v1/rooms/demo",
        "JWKS": f"{base}/.well-known/jwks.json",
    }


def admin_url(ctx: DevContext) -> str:
    return f"http://127.0.0.1:{ctx.admin_port}"


def _moto_url(ctx: DevContext) -> str:
    return f"http://127.0.0.1:{ctx.port('moto')}"


def _notifier_env(ctx: DevContext) -> dict[str, str]:
    """boto3's standard settings aimed at the local moto server, never at the machine's AWS credentials."""
    return {
        "AWS_ENDPOINT_URL": _moto_url(ctx),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",  # moto accepts any; not a secret
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "WAITROOM_NOTIFIER_MANAGED_ALARMS": "true",
        "WAITROOM_NOTIFIER_OPERATOR_EMAIL": "operator@example.com",
        "WAITROOM_NOTIFIER_DIMENSIONS": json.dumps({"Environment": "dev"}),
        "WAITROOM_NOTIFIER_HEALTH_PORT": str(ctx.port("notifier")),
    }


def _moto_urls(ctx: DevContext) -> dict[str, str]:
    return {"AWS (moto server)": _moto_url(ctx), "AWS state (moto)": f"{_moto_url(ctx)}/moto-api/"}


SERVICES: list[DevService] = [
    DevService(
        name="ticketing",
        module="waitroom_ticketing",
        env=_ticketing_env,
        ready_path="/readyz",
        port_of=lambda ctx: ctx.api_port,
        urls=_ticketing_urls,
    ),
    # AWS, locally: CloudWatch and SNS in memory, over HTTP, for the notifier.
    DevService(
        name="moto",
        module="moto.server",
        env=lambda ctx: {},
        ready_path="/moto-api/data.json",
        port_of=lambda ctx: ctx.port("moto"),
        args=lambda ctx: ("-H", "127.0.0.1", "-p", str(ctx.port("moto"))),
        urls=_moto_urls,
    ),
    # Expiry of silent tickets: its own health port, ready once it owns and has rebuilt its partitions.
    DevService(
        name="reaper",
        module="waitroom_reaper",
        env=lambda ctx: {"WAITROOM_REAPER_HEALTH_PORT": str(ctx.port("reaper"))},
        ready_path="/readyz",
        port_of=lambda ctx: ctx.port("reaper"),
        urls=lambda ctx: {"reaper metrics": f"http://127.0.0.1:{ctx.port('reaper')}/metrics"},
    ),
    DevService(
        name="notifier",
        module="waitroom_notifier",
        env=_notifier_env,
        ready_path="/readyz",
        port_of=lambda ctx: ctx.port("notifier"),
    ),
    # Statistics (faust): faust's data folder under the stack's data dir, not the working directory.
    DevService(
        name="stats",
        module="waitroom_stats",
        env=lambda ctx: {
            "WAITROOM_STATS_DATA_DIR": str(ctx.data_dir / "stats"),
            "WAITROOM_STATS_HEALTH_PORT": str(ctx.port("stats")),
        },
        ready_path="/readyz",
        port_of=lambda ctx: ctx.port("stats"),
    ),
]


def telemetry_env(trace_ui: TraceUI | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where the services send telemetry: the trace UI with ``--traces``; else wherever the caller's
    own ``OTEL_*`` variables say; else nowhere, so the services' logs stay readable (the SDK's
    default with no endpoint is the console exporter, a JSON document per span on stderr)."""
    if trace_ui is not None:
        return trace_ui.otel_env()
    own = os.environ if environ is None else environ
    if any(key.startswith(("OTEL_EXPORTER_OTLP_", "OTEL_TRACES_", "OTEL_METRICS_", "OTEL_SDK_")) for key in own):
        return {}
    return {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def ensure_signing_key(keys_dir: Path) -> None:
    """One P-256 key for entry tokens (ES256), made once, so tokens stay valid across restarts of the stack."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    keys_dir.mkdir(parents=True, exist_ok=True)
    if any(keys_dir.glob("*.pem")):
        return
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = keys_dir / f"dev-{time.strftime('%Y%m%d')}.pem"
    path.write_bytes(pem)
    path.chmod(0o600)


def _http_json(method: str, url: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback URL
    request.add_header("Authorization", f"Bearer {DEV_ADMIN_TOKEN}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback URL
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class Stack:
    def __init__(self, ctx: DevContext, services: list[DevService]) -> None:
        self.ctx = ctx
        self.services = services
        self.procs: dict[str, ServiceProcess] = {}
        self.restarts: dict[str, int] = {}

    def _process(self, service: DevService) -> ServiceProcess:
        ctx = self.ctx
        ready_url = None
        if service.ready_path is not None and service.port_of is not None:
            ready_url = f"http://127.0.0.1:{service.port_of(ctx)}{service.ready_path}"
        return ServiceProcess(
            service.name,
            service.module,
            {**ctx.base_env(), **service.env(ctx)},
            ctx.data_dir / "logs" / f"{service.name}.log",
            ready_url=ready_url,
            args=service.args(ctx),
        )

    def start(self) -> None:
        for service in self.services:
            _say(f"  starting {service.name} ...")
            proc = self._process(service).start()
            self.procs[service.name] = proc
        for service in self.services:
            self.procs[service.name].wait_ready(120)
            _say(f"  {service.name} ready (pid {self.procs[service.name].pid})")

    def supervise_once(self) -> None:
        """Restart any service that died (a crash-only design: state comes back from the log)."""
        for service in self.services:
            proc = self.procs[service.name]
            if proc.alive():
                continue
            count = self.restarts.get(service.name, 0) + 1
            self.restarts[service.name] = count
            _say(f"  {service.name} exited with {proc.returncode()}; restarting (#{count}); log: {proc.log_path}")
            time.sleep(min(10.0, 0.5 * 2 ** min(count, 5)))
            self.procs[service.name] = self._process(service).start()

    def stop(self) -> None:
        for service in reversed(self.services):
            proc = self.procs.get(service.name)
            if proc is not None:
                proc.stop()


def running_lines(ctx: DevContext, services: list[DevService], trace_ui: TraceUI | None = None) -> list[str]:
    """What the stack shows once it runs: one ``<label>  <url>`` a line, labels right-aligned, so
    each line reads ``API  http://…``, ``admin API  http://…`` once stripped."""
    rows: list[tuple[str, str]] = [("Kafka bootstrap", ctx.bootstrap)]
    for service in services:
        rows += list(service.urls(ctx).items())
    if trace_ui is not None:
        rows += [
            ("traces (Zipkin)", trace_ui.ui_url),
            ("OTLP/HTTP endpoint", trace_ui.otel_env()["OTEL_EXPORTER_OTLP_ENDPOINT"]),
        ]
    rows += [("admin token", f"{DEV_ADMIN_TOKEN} (development only)"), ("logs", str(ctx.data_dir / "logs"))]
    width = max(len(label) for label, _ in rows)
    return [f"  {label:>{width}}  {value}" for label, value in rows]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="waitroom-dev", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("WAITROOM_DEV_DATA_DIR", "var/dev")))
    parser.add_argument("--port", type=int, default=int(os.environ.get("WAITROOM_DEV_PORT", "8000")))
    parser.add_argument(
        "--admin-port",
        type=int,
        default=int(os.environ.get("WAITROOM_DEV_ADMIN_PORT", "8001")),
        help="the ticketing admin API (0: a free port)",
    )
    parser.add_argument("--partitions", type=int, default=12, help="partitions of each room topic")
    parser.add_argument("--prefix", default="waitroom", help="topic name prefix")
    parser.add_argument("--demo-capacity", type=int, default=5, help="capacity of the demo room")
    parser.add_argument(
        "--traces",
        action="store_true",
        default=os.environ.get("WAITROOM_DEV_TRACES", "") in ("1", "true"),
        help="start Zipkin (fetched once from Maven Central) and send every service's OTLP traces there",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    broker: EmbeddedKafka | None = None
    stack: Stack | None = None
    trace_ui: TraceUI | None = None
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap:
            _say(f"waitroom: using the Kafka cluster at {bootstrap}")
            asyncio.run(wait_for_broker(bootstrap, timeout_s=60))
        else:
            _say(f"waitroom: starting Apache Kafka (embedded) with data in {data_dir / 'kafka'}")
            broker = EmbeddedKafka(data_dir / "kafka")
            bootstrap = broker.start()
        from waitroom_events.topics import topic_registry

        asyncio.run(ensure_topics(bootstrap, topic_registry(args.prefix, args.partitions).all()))
        ensure_signing_key(data_dir / "jwt-keys")
        if args.traces:
            _say("  starting Zipkin (trace UI) ...")
            trace_ui = TraceUI(data_dir)
            trace_ui.start()
        admin_port = args.admin_port or free_port()
        ctx = DevContext(data_dir, bootstrap, args.prefix, args.partitions, args.port, admin_port)
        ctx.otel_env = telemetry_env(trace_ui)
        stack = Stack(ctx, SERVICES)
        stack.start()
        status, _ = _http_json("PUT", f"{admin_url(ctx)}/v1/admin/rooms/demo", {"capacity": args.demo_capacity})
        _say(f"  demo room: HTTP {status}")
        _say("")
        _say("waitroom is running:")
        for line in running_lines(ctx, SERVICES, trace_ui):
            _say(line)
        _say("Press Ctrl-C to stop.")
        _say("WAITROOM READY")
        while True:
            time.sleep(0.5)
            stack.supervise_once()
    except KeyboardInterrupt:
        _say("\nwaitroom: stopping ...")
    finally:
        # A second Ctrl-C must not cut the ordered shutdown short; every step has its own timeout.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if stack is not None:
            stack.stop()
        if trace_ui is not None:
            trace_ui.stop()
        if broker is not None:
            broker.stop()
    _say("waitroom: stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
