"""Composition root of the ticketing service: ``python -m waitroom_ticketing``.

Builds settings, Kafka clients, the read model, the sequencer and the HTTP app, and runs what the
role asks for (``all``: API and sequencer in one process; ``api``; ``sequencer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog
import uvicorn

from waitroom_platform.kafka import Publisher, make_producer
from waitroom_platform.metrics import RoomDepths, register_room_gauges
from waitroom_platform.service import load_settings, run_async, service_context
from waitroom_platform.telemetry import instrument_fastapi
from waitroom_ticketing.api import Services, create_app
from waitroom_ticketing.ratelimit import RateLimiter
from waitroom_ticketing.read_model import ReadModel
from waitroom_ticketing.sequencer import Sequencer, SequencerOptions
from waitroom_ticketing.settings import TicketingSettings
from waitroom_ticketing.stats_view import StatsView
from waitroom_ticketing.tokens import EntryTokenSigner, TicketTokens

log = structlog.get_logger()


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


async def run(settings: TicketingSettings) -> None:
    topics = settings.common.topics()
    tasks: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    sequencer: Sequencer | None = None
    if settings.role in ("all", "sequencer"):
        sequencer = Sequencer(
            settings.kafka,
            topics,
            SequencerOptions(group_id=settings.group_id, transactional=settings.transactions),
        )
        tasks.append(asyncio.create_task(sequencer.run(), name="sequencer"))

    producer = None
    read_model = None
    stats_view: StatsView | None = None
    server: uvicorn.Server | None = None
    if settings.role in ("all", "api"):
        producer = make_producer(settings.kafka)
        await producer.start()
        read_model = ReadModel(settings.kafka, topics.room_events.name)
        await read_model.start()
        register_room_gauges(room_depths(read_model))
        stats_view = StatsView(settings.kafka, topics.room_stats.name)
        await stats_view.start()
        assert settings.admin_token is not None and settings.ticket_secret is not None
        services = Services(
            topics=topics,
            publisher=Publisher(producer),
            read_model=read_model,
            tickets=TicketTokens(settings.ticket_secret.get_secret_value()),
            signer=build_signer(settings),
            admin_token=settings.admin_token.get_secret_value(),
            limiter=RateLimiter(settings.join_rate_per_ip, settings.join_burst),
            join_wait_s=settings.join_wait_s,
            publish_timeout_s=settings.publish_timeout_s,
            is_ready=lambda: read_model.ready and (sequencer is None or sequencer.ready.is_set()),
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
            backlog=4096,
        )
        server = uvicorn.Server(config)
        # uvicorn would take over SIGTERM/SIGINT; ours stop every part together, in order.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        tasks.append(asyncio.create_task(server.serve(), name="http"))
        log.info("ticketing_listening", url=f"http://{settings.host}:{settings.port}")

    stopper = asyncio.create_task(stop.wait(), name="stop")
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in done if t is not stopper and not t.cancelled() and t.exception() is not None]
    if server is not None:
        server.should_exit = True  # finish in-flight requests before the clients close
        await asyncio.wait([t for t in tasks if t.get_name() == "http"], timeout=10)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if stats_view is not None:
        await stats_view.stop()
    if read_model is not None:
        await read_model.stop()
    if producer is not None:
        await producer.stop()
    if failed:
        exc = failed[0].exception()
        log.error("ticketing_failed", task=failed[0].get_name(), error=repr(exc))
        raise SystemExit(1)
    log.info("ticketing_stopped")


def main() -> None:
    settings = load_settings(TicketingSettings, "ticketing")
    with service_context("ticketing", settings.common):
        run_async(run(settings))


if __name__ == "__main__":
    main()
