"""Composition root of the ticketing service: ``python -m waitroom_ticketing``.

Settings, then the components the role asks for (``all``: API and sequencer in one process;
``api``; ``sequencer``): the sequencer, the producer, the read model, the stats view and the HTTP
server, started in that order and stopped in reverse. The topics must exist (the dev command, the
chart's hook Job or ``python -m waitroom_platform.topics_cli`` create them).
"""

from __future__ import annotations

import contextlib

import structlog
import uvicorn

from waitroom_platform.kafka import ProducerComponent, Publisher, make_producer
from waitroom_platform.metrics import RoomDepths, register_room_gauges
from waitroom_platform.runtime import Component
from waitroom_platform.service import run_service
from waitroom_platform.telemetry import instrument_fastapi
from waitroom_ticketing.api import Services, create_app
from waitroom_ticketing.ratelimit import RateLimiter
from waitroom_ticketing.read_model import ReadModel
from waitroom_ticketing.sequencer import Sequencer, SequencerOptions
from waitroom_ticketing.settings import TicketingSettings
from waitroom_ticketing.stats_view import StatsView
from waitroom_ticketing.tokens import EntryTokenSigner, TicketTokens

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
    """uvicorn serving the API; stopping finishes the requests in flight before the clients close."""

    name = "http"

    def __init__(self, config: uvicorn.Config) -> None:
        self._server = uvicorn.Server(config)
        # uvicorn would take over SIGTERM/SIGINT; the supervisor stops every part together, in order.
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._config = config

    async def start(self) -> None:
        log.info("ticketing_listening", url=f"http://{self._config.host}:{self._config.port}")

    async def run(self) -> None:
        await self._server.serve()

    async def drain(self) -> None:
        self._server.should_exit = True

    def ready(self) -> bool:
        return self._server.started


def build(settings: TicketingSettings) -> list[Component]:
    topics = settings.common.topics()
    components: list[Component] = []
    sequencer: Sequencer | None = None
    if settings.role in ("all", "sequencer"):
        sequencer = Sequencer(
            settings.kafka, topics, SequencerOptions(group_id=settings.group, transactional=settings.transactions)
        )
        components.append(sequencer)
    if settings.role in ("all", "api"):
        producer = ProducerComponent(make_producer(settings.kafka))
        read_model = ReadModel(settings.kafka, topics.room_events.name)
        register_room_gauges(room_depths(read_model))
        stats_view = StatsView(settings.kafka, topics.room_stats.name)
        assert settings.admin_token is not None and settings.ticket_secret is not None
        services = Services(
            topics=topics,
            publisher=Publisher(producer.producer),
            read_model=read_model,
            tickets=TicketTokens(settings.ticket_secret.get_secret_value()),
            signer=build_signer(settings),
            admin_token=settings.admin_token.get_secret_value(),
            limiter=RateLimiter(settings.join_rate_per_ip, settings.join_burst),
            join_wait_s=settings.join_wait_s,
            publish_timeout_s=settings.publish_timeout_s,
            is_ready=lambda: read_model.ready() and (sequencer is None or sequencer.ready()),
            stats=stats_view,
        )
        app = create_app(services)
        instrument_fastapi(app)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # Longer than the idle timeout of common load balancers (60 s), so the server never
            # closes a kept-alive connection that a client or proxy is about to reuse.
            timeout_keep_alive=settings.keepalive_s,
            timeout_graceful_shutdown=int(HTTP_DRAIN_S),
            backlog=4096,
        )
        components += [producer, read_model, stats_view, HttpServer(config)]
    return components


def main() -> None:
    run_service("ticketing", TicketingSettings, build)


if __name__ == "__main__":
    main()
