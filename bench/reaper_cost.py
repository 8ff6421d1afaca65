"""What the reaper costs with many live tickets heartbeating, and how precisely it expires the silent.

For each ticket count, the bench writes rooms and issued tickets straight to room-events (no
sequencer: the reaper only reads the log), starts a reaper process, and produces a heartbeat for
every ticket every ``--interval`` seconds (evenly spread) onto the heartbeats topic. After a warm-up
of one full check cycle it measures, over ``--duration`` seconds: records per second in (heartbeats,
checks due) and out (checks written, expiry requests), the reaper's CPU and RSS. A small share of the
tickets stops heartbeating during the window; their ``ExpireRequested`` records on the commands
topic give the expiry lateness (request time minus last heartbeat minus the timeout).

    python -m bench.reaper_cost --tickets 10000 100000 --duration 60 --write-docs

Runs against ``KAFKA_BOOTSTRAP_SERVERS`` if set, else an embedded Kafka of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    CpuMeter,
    broker_for_bench,
    fresh_topics,
    markdown_table,
    rss_mb,
    run_facts,
    say,
    write_section,
)
from waitroom_devtools.procs import ServiceProcess, free_port
from waitroom_events.codec import decode, encode
from waitroom_events.commands import ExpireRequested
from waitroom_events.events import RoomConfigured, TicketIssued
from waitroom_events.heartbeats import Heartbeat, HeartbeatBatch
from waitroom_events.topics import TopicRegistry

TIMEOUT_S = 20.0
SECTION = "Reaper"


@dataclass
class Result:
    tickets: int
    silent: int
    heartbeats_per_s: float
    checks_written_per_s: float
    checks_read_per_s: float
    ticket_checks_per_s: float
    expiries_per_s: float
    reaper_cpu: float | None
    generator_cpu: float | None
    rss_mb: float | None
    lateness: list[float]
    false_expiries: int
    #: partitions the reaper rebuilt from the log (once each at its start, unless the group took
    #: them back) and how long the last rebuild took
    recoveries: int = 0
    last_recovery_s: float | None = None


async def end_offsets(bootstrap: str, topics: list[str], partitions: int) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return {t: sum(off for tp, off in ends.items() if tp.topic == t) for t in topics}
    finally:
        await consumer.stop()


async def read_expiries(bootstrap: str, topic: str, partitions: int) -> list[ExpireRequested]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: list[ExpireRequested] = []
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    message = decode(record.value, record.headers)
                    if isinstance(message, ExpireRequested):
                        found.append(message)
        return found
    finally:
        await consumer.stop()


def reaper_metrics(port: int) -> dict[str, float]:
    """The reaper's own counters off its Prometheus ``/metrics`` (``waitroom_reaper_<name>``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    prefix = "waitroom_reaper_"
    return {
        sample.name.removeprefix(prefix): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(prefix)
    }


async def seed(bootstrap: str, topics: TopicRegistry, rooms: list[str], tickets: list[tuple[str, str]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        now = time.time()
        sends = []
        for room in rooms:
            configured = RoomConfigured(
                room_id=room,
                at=now,
                capacity=1_000_000,
                heartbeat_timeout_s=TIMEOUT_S,
                heartbeat_interval_s=5.0,
                target_url=None,
                paused=False,
            )
            record = encode(configured)
            sends.append(
                await producer.send(topics.room_events.name, record.value, key=record.key, headers=record.headers)
            )
        queue_nos: dict[str, int] = {}
        for room, ticket_id in tickets:
            queue_nos[room] = queue_nos.get(room, 0) + 1
            record = encode(TicketIssued(room_id=room, ticket_id=ticket_id, queue_no=queue_nos[room], at=time.time()))
            sends.append(
                await producer.send(topics.room_events.name, record.value, key=record.key, headers=record.headers)
            )
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


class HeartbeatGenerator:
    """Every ticket heartbeats every ``interval_s``, phases spread evenly; ``silence`` stops some."""

    def __init__(
        self, bootstrap: str, topic: str, tickets: list[tuple[str, str]], interval_s: float, batch: bool = False
    ) -> None:
        self._batch = batch
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=512 * 1024)
        self._topic = topic
        self._tickets = tickets
        self._interval_s = interval_s
        self.silenced: set[str] = set()
        self.last_sent: dict[str, float] = {}
        self.sent = 0
        self.behind_s = 0.0

    async def run(self, until: float) -> None:
        await self._producer.start()
        try:
            slot_s = 0.1
            slots = max(1, int(self._interval_s / slot_s))
            per_slot = [self._tickets[i::slots] for i in range(slots)]
            start = time.monotonic()
            n = 0
            pending: list[Any] = []
            while time.monotonic() < until:
                target = start + n * slot_s
                delay = target - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    self.behind_s = max(self.behind_s, -delay)
                if self._batch:
                    # as the API's coalescing writes them: one record per room per slot (a 100 ms window)
                    by_room: dict[str, list[str]] = {}
                    for room, ticket_id in per_slot[n % slots]:
                        if ticket_id not in self.silenced:
                            by_room.setdefault(room, []).append(ticket_id)
                    for room, ids in by_room.items():
                        at = time.time()
                        record = encode(HeartbeatBatch(room_id=room, ticket_ids=ids, at=at))
                        pending.append(
                            await self._producer.send(self._topic, record.value, key=record.key, headers=record.headers)
                        )
                        for ticket_id in ids:
                            self.last_sent[ticket_id] = at
                        self.sent += len(ids)
                for room, ticket_id in [] if self._batch else per_slot[n % slots]:
                    if ticket_id in self.silenced:
                        continue
                    at = time.time()
                    record = encode(Heartbeat(room_id=room, ticket_id=ticket_id, at=at))
                    pending.append(
                        await self._producer.send(self._topic, record.value, key=record.key, headers=record.headers)
                    )
                    self.last_sent[ticket_id] = at
                    self.sent += 1
                if len(pending) > 20_000:
                    await asyncio.gather(*pending)
                    pending = []
                n += 1
            await asyncio.gather(*pending)
        finally:
            await self._producer.stop()


def run_one(bootstrap: str, n_tickets: int, args: argparse.Namespace, work_dir: Path) -> Result:
    topics = fresh_topics(bootstrap, args.partitions)
    rooms = [f"room-{i}" for i in range(args.rooms)]
    tickets = [(rooms[i % len(rooms)], f"t{i:07d}") for i in range(n_tickets)]
    say(f"[{n_tickets}] seeding {len(rooms)} rooms and {n_tickets} issued tickets ...")
    asyncio.run(seed(bootstrap, topics, rooms, tickets))

    port = free_port()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "WAITROOM_TOPIC_PREFIX": topics.commands.name.removesuffix(".commands"),
        "WAITROOM_ROOM_PARTITIONS": str(args.partitions),
        "WAITROOM_LOG_FORMAT": "json",
        "WAITROOM_LOG_LEVEL": "WARNING",
        "WAITROOM_REAPER_HEALTH_PORT": str(port),
        "OTEL_SDK_DISABLED": "true",
    }
    reaper = ServiceProcess("reaper", "waitroom_reaper", env, work_dir / f"reaper-{n_tickets}.log")
    reaper.ready_url = f"http://127.0.0.1:{port}/readyz"
    silent_ids = {ticket_id for _, ticket_id in tickets[:: max(1, int(1 / args.silent_fraction))]}
    watched = [topics.heartbeats.name, topics.reaper_delay.name, topics.commands.name]

    async def scenario() -> tuple[Result, HeartbeatGenerator]:
        generator = HeartbeatGenerator(bootstrap, topics.heartbeats.name, tickets, args.interval, args.batch)
        warmup_s = 12.0
        loop_start = time.monotonic()
        gen = asyncio.create_task(generator.run(until=loop_start + warmup_s + args.duration))
        reaper.start()
        await asyncio.to_thread(reaper.wait_ready, 120)
        await asyncio.sleep(max(0.0, loop_start + warmup_s - time.monotonic()))
        say(f"[{n_tickets}] measuring for {args.duration:.0f} s ...")
        meter = CpuMeter({"reaper": reaper.pid, "generator": _self_pid()})
        before = await end_offsets(bootstrap, watched, args.partitions)
        metrics_before = reaper_metrics(port)
        sent_before = generator.sent
        meter.start()
        started = time.monotonic()
        await asyncio.sleep(min(10.0, args.duration / 4))
        generator.silenced.update(silent_ids)  # these go quiet now
        await gen
        elapsed = time.monotonic() - started
        cores = meter.stop()
        after = await end_offsets(bootstrap, watched, args.partitions)
        metrics_after = reaper_metrics(port)
        rss = rss_mb(reaper.pid)
        expiries = await read_expiries(bootstrap, topics.commands.name, args.partitions)
        first: dict[str, ExpireRequested] = {}
        for e in expiries:
            first.setdefault(e.ticket_id, e)
        lateness = [e.requested_at - generator.last_sent[t] - TIMEOUT_S for t, e in first.items() if t in silent_ids]
        checks_delta = metrics_after["check_records_handled"] - metrics_before["check_records_handled"]
        return Result(
            tickets=n_tickets,
            silent=len(silent_ids),
            heartbeats_per_s=(generator.sent - sent_before) / elapsed,
            checks_written_per_s=(after[topics.reaper_delay.name] - before[topics.reaper_delay.name]) / elapsed,
            checks_read_per_s=checks_delta / elapsed,
            ticket_checks_per_s=(metrics_after["ticket_checks"] - metrics_before["ticket_checks"]) / elapsed,
            expiries_per_s=(after[topics.commands.name] - before[topics.commands.name]) / elapsed,
            reaper_cpu=cores.get("reaper"),
            generator_cpu=cores.get("generator"),
            rss_mb=rss,
            lateness=sorted(lateness),
            false_expiries=len([t for t in first if t not in silent_ids]),
            recoveries=int(metrics_after.get("recoveries", 0)),
            last_recovery_s=metrics_after.get("last_recovery_s"),
        ), generator

    try:
        result, generator = asyncio.run(scenario())
    finally:
        reaper.stop()
    say(f"[{n_tickets}] {result}")
    if generator.behind_s > 1.0:
        say(f"[{n_tickets}] warning: the heartbeat generator fell {generator.behind_s:.1f} s behind")
    return result


def _self_pid() -> int:
    import os

    return os.getpid()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[index]


def fmt(value: float | None, digits: int = 2) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def report(results: list[Result], facts: str, args: argparse.Namespace) -> str:
    cost = markdown_table(
        [
            "live tickets",
            "heartbeats in /s",
            "check records out /s",
            "check records in /s",
            "tickets checked /s",
            "expiry requests out /s",
            "reaper CPU (% of a core)",
            "reaper RSS MB",
            "generator CPU (% of a core)",
            "partitions rebuilt (of them)",
            "last rebuild s",
        ],
        [
            (
                r.tickets,
                f"{r.heartbeats_per_s:.0f}",
                fmt(r.checks_written_per_s),
                fmt(r.checks_read_per_s),
                f"{r.ticket_checks_per_s:.0f}",
                fmt(r.expiries_per_s),
                fmt(None if r.reaper_cpu is None else 100 * r.reaper_cpu, 1),
                fmt(r.rss_mb, 0),
                fmt(None if r.generator_cpu is None else 100 * r.generator_cpu, 1),
                f"{r.recoveries} ({args.partitions})",
                fmt(r.last_recovery_s, 2),
            )
            for r in results
        ],
    )
    precision = markdown_table(
        [
            "live tickets",
            "silent tickets",
            "expired",
            "lateness p50 s",
            "p99 s",
            "max s",
            "expired while heartbeating",
        ],
        [
            (
                r.tickets,
                r.silent,
                len(r.lateness),
                fmt(statistics.median(r.lateness) if r.lateness else None, 3),
                fmt(pct(r.lateness, 0.99), 3),
                fmt(max(r.lateness) if r.lateness else None, 3),
                r.false_expiries,
            )
            for r in results
        ],
    )
    return "\n\n".join(
        [
            facts,
            f"- scenario: {args.rooms} rooms, {args.partitions} partitions per room topic, "
            f"every ticket heartbeats every {args.interval:.0f} s "
            "(produced straight to the heartbeats topic by the bench"
            + (", coalesced as the API writes them: one `HeartbeatBatch` per room per 100 ms" if args.batch else "")
            + "), room timeout "
            f"{TIMEOUT_S:.0f} s, delay topic 10 s; a 12 s warm-up, then {args.duration:.0f} s measured. "
            f"{args.silent_fraction:.0%} of the tickets stop heartbeating 10 s into the window.",
            "- records: check records are the reaper's durable schedule on the delay topic (one per room with live "
            "tickets per check cycle, not one per ticket); 'tickets checked' is how many live tickets those checks "
            "looked at; expiry requests are `ExpireRequested` on the commands topic (no sequencer runs here, so "
            "an unanswered request is repeated every 10 s); the reaper starts once the tickets are written and "
            "heartbeating, so it rebuilds each partition from the log first: 'partitions rebuilt' counts those "
            "rebuilds during the whole run (more than the partitions: the group took some back and they were "
            "rebuilt again).",
            cost,
            "Expiry precision under that load (lateness = time of the `ExpireRequested` minus the last heartbeat "
            f"sent minus the {TIMEOUT_S:.0f} s timeout; the sequencer adds its own few milliseconds):",
            precision,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickets", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds per row (bounded: max 300)")
    parser.add_argument("--interval", type=float, default=5.0, help="heartbeat interval of every ticket")
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--silent-fraction", type=float, default=0.01)
    parser.add_argument(
        "--batch", action="store_true", help="heartbeats as HeartbeatBatch records, as the API coalesces them"
    )
    parser.add_argument("--write-docs", action="store_true", help=f"replace the '## {SECTION}' section of docs")
    args = parser.parse_args()
    args.duration = min(args.duration, 300.0)
    with tempfile.TemporaryDirectory(prefix="bench-reaper-") as tmp, broker_for_bench(Path(tmp)) as broker:
        facts = run_facts(broker)
        results = [run_one(broker.bootstrap, n, args, Path(tmp)) for n in args.tickets]
    text = report(results, facts, args)
    section = f"{SECTION}, coalesced heartbeats" if args.batch else SECTION
    print(text)
    if args.write_docs:
        write_section(section, text)


if __name__ == "__main__":
    main()
