"""Composition root of the reaper: ``python -m waitroom_reaper``.

Settings, then the components, started in this order and stopped in reverse: the topics, the
producer everything writes through, the heartbeat feed, the final approach (looks) and the reaper
(the delay topic's group: recovery and the durable checks). The parts share the owned partitions'
state and the counters; the health port comes with the runtime.
"""

from __future__ import annotations

import dataclasses
import functools

from waitroom_platform.admin import EnsureTopics
from waitroom_platform.kafka import ProducerComponent, Publisher, make_consumer, make_producer, send_to_dead_letter
from waitroom_platform.metrics import expose_numbers
from waitroom_platform.runtime import Component
from waitroom_platform.service import run_service
from waitroom_platform.snapshots import SnapshotStore
from waitroom_reaper.feed import HeartbeatFeed
from waitroom_reaper.looks import FinalApproach, Looks
from waitroom_reaper.options import Metrics, ReaperOptions
from waitroom_reaper.output import Output
from waitroom_reaper.reaper import Reaper
from waitroom_reaper.recovery import Recovery, kafka_log_reader
from waitroom_reaper.schedule import Schedule
from waitroom_reaper.settings import ReaperSettings
from waitroom_reaper.state import Owned

#: what the broker gathers for the heartbeat feed's fetch before it answers (within its 100 ms wait):
#: under joins, a fetch per sequencer transaction (about 100 a second) became one per 64 KiB
FEED_FETCH_MIN_BYTES = 64 * 1024


def reaper_options(settings: ReaperSettings) -> ReaperOptions:
    return ReaperOptions(
        group_id=settings.group,
        heartbeat_group_id=settings.heartbeat_group,
        heartbeat_grace_s=settings.heartbeat_grace_s,
        check_tick_s=settings.check_tick_s,
        resend_expire_after_s=settings.resend_expire_after_s,
        recovery_margin_s=settings.recovery_margin_s,
        session_timeout_ms=settings.session_timeout_ms,
    )


def build(settings: ReaperSettings) -> list[Component]:
    kafka, topics, options = settings.kafka, settings.common.topics(), reaper_options(settings)
    metrics = Metrics()
    owned: Owned = {}
    producer = ProducerComponent(make_producer(kafka, linger_ms=5), name="reaper-producer")
    output = Output(
        Publisher(producer.producer), functools.partial(send_to_dead_letter, producer.producer), topics, metrics
    )
    looks = Looks(owned, options.heartbeat_grace_s)
    schedule = Schedule(owned, looks, output, metrics, options, topics.reaper_delay)
    # An idle heartbeats partition proves silence with each fetch that returns empty at its end
    # (feed._heard_to_the_end): 100 ms bounds what that adds to an expiry's lateness, at a tenth of
    # the empty fetches 20 ms cost. The broker holds a fetch until FEED_FETCH_MIN_BYTES are there or
    # the 100 ms are up, so a fetch is no longer answered for each sequencer transaction.
    feed_consumer = make_consumer(
        kafka,
        group_id=options.heartbeat_group_id,
        fetch_max_wait_ms=100,
        fetch_min_bytes=FEED_FETCH_MIN_BYTES,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    feed = HeartbeatFeed(feed_consumer, topics, owned, looks, schedule, output, metrics)
    snapshots = SnapshotStore(kafka, topics.snapshots.name) if settings.snapshots else None
    recovery = Recovery(
        lambda: kafka_log_reader(kafka),
        topics,
        owned,
        feed,
        looks,
        schedule,
        output,
        metrics,
        options,
        snapshots=snapshots,
    )
    reaper = Reaper(kafka, options, owned, schedule, recovery, metrics)
    expose_numbers(
        "waitroom_reaper",
        lambda: {
            **dataclasses.asdict(reaper.metrics),
            "live_tickets": reaper.live_tickets(),
            "partitions": len(reaper.owned_partitions()),
        },
        "the reaper's counters since start",
    )
    return [
        EnsureTopics(kafka, topics.all),
        producer,
        feed,
        FinalApproach(looks, output, metrics, options.heartbeat_grace_s),
        reaper,
    ]


def main() -> None:
    run_service("reaper", ReaperSettings, build)


if __name__ == "__main__":
    main()
