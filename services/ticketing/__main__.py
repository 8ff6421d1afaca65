"""Composition root of the ticketing service: ``python -m waitroom_ticketing``.

Settings, then the components the role asks for (``all``: API and sequencer in one process;
``api``; ``sequencer``): the sequencer, the producer, the read model, the stats view, the admin
HTTP server and the public one, started in that order and stopped in reverse. The two servers
serve two apps over the same services (``api.py``): the public listener
(``WAITROOM_TICKETING_HOST``/``_PORT``) and the admin listener (``..._ADMIN_HOST``/``_ADMIN_PORT``).
The topics must exist (the dev command, the chart's hook Job or
``python -m waitroom_platform.topics_cli`` create them).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence

import structlog
import uvicorn
from starlette.types import ASGIApp

from waitroom_events.events import RoomEvent
from waitroom_platform.heap import HeapFreezer
from waitroom_platform.kafka import ProducerComponent, Publisher, make_producer
from waitroom_platform.metrics import RoomDepths, register_room_gauges
from waitroom_platform.runtime import Component, OwnLoop
from waitroom_platform.service import run_service
from waitroom_platform.snapshots import SnapshotStore
from waitroom_platform.telemetry import instrument_fastapi
from waitroom_ticketing.api import Services, create_admin_app, create_public_app
from waitroom_ticketing.aws_vwr import mount_aws_vwr
from waitroom_ticketing.console import ConsoleFeed, mount_console
from waitroom_ticketing.edge import TrustedProxies
from waitroom_ticketing.fastpath import VisitorFastPath
from waitroom_ticketing.heartbeats import HeartbeatCoalescer
from waitroom_ticketing.limits import limited_protocol
from waitroom_ticketing.ratelimit import RateLimiter
from waitroom_ticketing.read_model import ReadModel
from waitroom_ticketing.sequencer import Sequencer, SequencerOptions, decider_of
from waitroom_ticketing.settings import TicketingSettings
from waitroom_ticketing.stats_view import StatsView
from waitroom_ticketing.streams import StreamHub, bound_half_open, mount_streams
from waitroom_ticketing.tokens import EntryTokenSigner, TicketTokens
from waitroom_ticketing.workers import Workers

log = structlog.get_logger()

#: how long in-flight requests may take to finish once the server stops accepting
HTTP_DRAIN_S = 10.0


def build_signer(settings: TicketingSettings) -> EntryTokenSigner:
    if settings.jwt_keys_dir is not None:
        return EntryTokenSigner.from_dir(
            settings.jwt_keys_dir, settings.jwt_issuer, settings.entry_token_ttl_s, settings.jwt_active_kid
        )
    log.warning("ephemeral_signing_key", reason="WAITROOM_TICKETING_JWT_KEYS_DIR not set (development)")
    return EntryTokenSigner.ephemeral(settings.jwt_issuer, settings.entry_token_ttl_s)


def room_depths(read_model: ReadModel) -> RoomDepths:
    """Queue depth per room for the ``waitroom.room.*`` gauges, read off the read model."""
    return lambda: [
        (room.room_id, room.waiting, room.active) for room in list(read_model.rooms.values()) if room.exists
    ]


class HttpServer(Component):
    """uvicorn serving one app; stopping finishes the requests in flight before the clients close.

    ``start()`` binds the listening socket, so a port already taken fails the start (with the
    component's name) and port 0 is known, and logged, before the service says it is started.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        name: str = "http",
        event: str = "ticketing_listening",
        reuse_port: bool = False,
    ) -> None:
        self._reuse_port = reuse_port
        self.name = name
        self._event = event
        self._server = uvicorn.Server(config)
        # uvicorn would take over SIGTERM/SIGINT; the supervisor stops every part together, in order.
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._config = config
        self._socket: socket.socket | None = None
        self.url: str | None = None

    async def start(self) -> None:
        self._socket = bind(self._config.host, self._config.port, reuse_port=self._reuse_port)
        port = self._socket.getsockname()[1]
        host = self._config.host
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        log.info(self._event, url=self.url)

    async def run(self) -> None:
        assert self._socket is not None
        await self._server.serve(sockets=[self._socket])

    async def drain(self) -> None:
        self._server.should_exit = True

    async def stop(self) -> None:
        if self._socket is not None:
            self._socket.close()

    def ready(self) -> bool:
        return self._server.started


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one); uvicorn listens on it. Unlike
    uvicorn's own binding, a failure raises ``OSError`` instead of exiting the process."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # several workers on one port: the kernel spreads the connections
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        bound_half_open(sock)  # streams.py: a peer gone without a FIN is noticed in seconds
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def http_config(app: ASGIApp, host: str, port: int, settings: TicketingSettings) -> uvicorn.Config:
    """One listener's uvicorn settings; proxy headers are never uvicorn's business (see ``edge.py``)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        # The client's address is decided by our trusted-proxy setting alone: uvicorn must neither
        # rewrite request.client from X-Forwarded-For nor trust any address for it.
        proxy_headers=False,
        forwarded_allow_ips=[],
        # Longer than the idle timeout of common load balancers (60 s), so the server never
        # closes a kept-alive connection that a client or proxy is about to reuse.
        timeout_keep_alive=settings.keepalive_s,
        timeout_graceful_shutdown=int(HTTP_DRAIN_S),
        http=limited_protocol(
            header_timeout_s=settings.header_timeout_s,
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
        ),
        backlog=4096,
    )


def sequencer_options(settings: TicketingSettings) -> SequencerOptions:
    return SequencerOptions(
        group_id=settings.group,
        transactional=settings.transactions,
        snapshot_every_events=settings.snapshot_every_events,
        snapshot_every_s=settings.snapshot_every_s,
        snapshot_keep_ended_s=settings.snapshot_keep_ended_s,
        session_timeout_ms=settings.session_timeout_ms,
        transactional_ids=settings.transactional_ids,
    )


def build(settings: TicketingSettings) -> list[Component]:
    topics = settings.common.topics()
    # First, so the heap the sequencer and the read model build is frozen as it grows (heap.py).
    components: list[Component] = [HeapFreezer()]
    sequencer: OwnLoop | None = None
    #: this process's read model once built: an all-in-one sequencer hands it what it commits (ADR 0009)
    taker: list[ReadModel] = []

    def committed(partition: int, after: int, upto: int, events: Sequence[RoomEvent]) -> None:
        if taker:
            taker[0].take_committed_threadsafe(partition, after, upto, events)

    if settings.role in ("all", "sequencer"):
        hand_off = committed if settings.role == "all" else None
        # On a loop and thread of its own: a saturated API cannot hold up its group heartbeats.
        sequencer = OwnLoop(
            "sequencer",
            lambda: Sequencer(settings.kafka, topics, sequencer_options(settings), committed=hand_off),
        )
        components.append(sequencer)
    if settings.role in ("all", "api"):
        # linger 0: a join's command goes out at once; under load records still batch, because
        # aiokafka keeps one request in flight per broker and the next takes whatever queued meanwhile
        producer = ProducerComponent(make_producer(settings.kafka, linger_ms=0))
        snapshots = SnapshotStore(settings.kafka, topics.snapshots.name) if settings.snapshot_every_events else None
        read_model = ReadModel(settings.kafka, topics.room_events.name, snapshots, settings.snapshot_keep_ended_s)
        taker.append(read_model)
        register_room_gauges(room_depths(read_model))
        stats_view = StatsView(settings.kafka, topics.room_stats.name)
        assert settings.admin_token is not None and settings.ticket_secret is not None
        publisher = Publisher(producer.producer)
        heartbeats = HeartbeatCoalescer(
            lambda message: publisher.publish(topics.heartbeats.name, message),
            window_s=settings.heartbeat_window_ms / 1000.0,
            publish_timeout_s=settings.publish_timeout_s,
        )
        services = Services(
            topics=topics,
            publisher=publisher,
            heartbeats=heartbeats,
            read_model=read_model,
            tickets=TicketTokens(settings.ticket_secret.get_secret_value()),
            signer=build_signer(settings),
            admin_token=settings.admin_token.get_secret_value(),
            limiter=RateLimiter(settings.join_rate_per_ip, settings.join_burst),
            join_wait_s=settings.join_wait_s,
            publish_timeout_s=settings.publish_timeout_s,
            is_ready=lambda: read_model.ready() and (sequencer is None or sequencer.ready()),
            stats=stats_view,
            proxies=TrustedProxies.parse(settings.trusted_proxies),
            # the sequencer of this process decides the joins of the rooms it owns (docs/adr/0011)
            decide_locally=decider_of(sequencer) if sequencer is not None and settings.local_joins else None,
        )
        public_app = create_public_app(services, max_body_bytes=settings.max_body_bytes)
        admin_app = create_admin_app(
            services,
            docs=settings.docs_enabled,
            public_openapi=public_app.openapi,
            max_body_bytes=settings.max_body_bytes,
        )
        console = ConsoleFeed(settings.kafka, topics)
        mount_console(admin_app, console)
        aws_vwr = mount_aws_vwr(settings, services, public_app, admin_app)
        public_instrumented = instrument_fastapi(public_app)
        instrument_fastapi(admin_app)
        # The ticket streams (streams.py): mounted last, so the token hiding wraps tracing too.
        streams = StreamHub()
        public_asgi = mount_streams(public_app, services, streams)
        if not public_instrumented:  # with spans or metrics, every call goes through FastAPI's instrumentation
            public_asgi = VisitorFastPath(public_asgi, services, max_body_bytes=settings.max_body_bytes)
        admin_server = HttpServer(
            http_config(admin_app, settings.admin_host, settings.admin_port, settings),
            name="admin_http",
            event="admin_listening",
        )
        public_server = HttpServer(
            http_config(public_asgi, settings.host, settings.port, settings),
            reuse_port=settings.workers > 1 or settings.worker_index > 0,
        )
        # The console's feed last: stopped first, it ends the open console streams before the admin drain.
        components += [producer, heartbeats, read_model, stats_view, admin_server, public_server, *aws_vwr, console]
        components.append(streams)  # stopped first: it ends the open ticket streams before the drain
        if settings.workers > 1:
            components.append(Workers(settings.workers))
    return components


def main() -> None:
    run_service("ticketing", TicketingSettings, build)


if __name__ == "__main__":
    main()
