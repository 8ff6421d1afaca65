"""One room's sequencer: commands applied per second, with commands produced straight to the topic.

The bench writes a room's configuration and then ``--commands`` commands (joins, and leaves of
earlier tickets, ``--leave-share``) to ``waitroom.commands`` partition 0 (a one-partition topic
set), before any sequencer runs. It then starts a dedicated sequencer process
(``WAITROOM_TICKETING_ROLE=sequencer``, transactions on, as deployed) and measures from its
``partition_owned`` log line (the empty event log replayed) until room-events holds, committed,
an event of the last command (every command makes at least one): every command decided, its events
appended and committed. With ``--profile`` it records a py-spy profile of the sequencer while it works.

    python -m bench.sequencer_throughput --commands 200000 --write-docs
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import (
    Broker,
    CpuMeter,
    broker_for_bench,
    fresh_topics,
    markdown_table,
    run_facts,
    say,
    ticketing_process,
    wait_for_log_event,
    write_section,
)
from waitroom_events.codec import encode, header
from waitroom_events.commands import Command, JoinRequested, LeaveRequested, RoomConfigureRequested
from waitroom_events.topics import TopicRegistry
from waitroom_platform.kafka import HEADER_SOURCE_OFFSET, make_producer, queue_records
from waitroom_platform.logging import configure_logging
from waitroom_platform.settings import KafkaSettings

SECTION = "Sequencer throughput"
ROOM = "bench-sequencer"


def commands(total: int, leave_share: float, capacity: int, seed: int = 7) -> list[Command]:
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    out: list[Command] = [RoomConfigureRequested(room_id=ROOM, requested_at=1.0, capacity=capacity)]
    joined: list[str] = []
    now = 2.0
    while len(out) < total + 1:
        now += 0.0001
        if joined and rng.random() < leave_share:
            ticket = joined.pop(rng.randrange(len(joined)))
            out.append(LeaveRequested(room_id=ROOM, ticket_id=ticket, requested_at=now))
        else:
            ticket = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            joined.append(ticket)
            out.append(JoinRequested(room_id=ROOM, ticket_id=ticket, requested_at=now))
    return out


async def produce(bootstrap: str, topic: str, items: list[Command]) -> None:
    producer = make_producer(KafkaSettings(bootstrap_servers=bootstrap), linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        # the sequencer's own batch append (one record batch at a time per partition, in order)
        await asyncio.gather(*await queue_records(producer, topic, 0, [encode(command) for command in items]))
    finally:
        await producer.stop()


async def wait_applied(bootstrap: str, topic: str, end: int, timeout_s: float) -> float:
    """Seconds (monotonic clock) at which room-events held, committed, an event of command ``end - 1``.

    Read from the events (their source-offset header, read_committed), not from the group's
    committed offset: the sequencer sends that into a transaction only about once a second.
    """
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False)
    await reader.start()
    tp = TopicPartition(topic, 0)
    reader.assign([tp])
    await reader.seek_to_beginning(tp)
    deadline = time.monotonic() + timeout_s
    last_report = time.monotonic()
    applied = -1
    try:
        while time.monotonic() < deadline:
            for record in (await reader.getmany(tp, timeout_ms=200, max_records=10_000)).get(tp, []):
                source = header(record.headers, HEADER_SOURCE_OFFSET)
                if source is not None:
                    applied = max(applied, int(source))
            if applied >= end - 1:
                return time.monotonic()
            if time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                say(f"  applied {applied + 1:,} of {end:,} commands")
    finally:
        await reader.stop()
    raise TimeoutError(f"the sequencer did not apply {end} commands within {timeout_s:.0f} s")


@dataclass
class Run:
    commands: int
    leave_share: float
    seconds: float
    cpu_cores: float | None
    kafka_cores: float | None
    max_batch: int


def measure(broker: Broker, work_dir: Path, total: int, leave_share: float, profile: Path | None) -> Run:
    topics: TopicRegistry = fresh_topics(broker.bootstrap, partitions=1)
    items = commands(total, leave_share, capacity=100)
    say(f"{total:,} commands: producing to {topics.commands.name} ...")
    asyncio.run(produce(broker.bootstrap, topics.commands.name, items))
    proc = ticketing_process(broker.bootstrap, topics, work_dir, name=f"sequencer-{total}")
    proc.env["WAITROOM_TICKETING_ROLE"] = "sequencer"
    proc.env["WAITROOM_LOG_LEVEL"] = "INFO"
    proc.ready_url = None
    proc.start()
    spy = None
    try:
        wait_for_log_event(proc, "partition_owned", 120)
        started = time.monotonic()
        meter = CpuMeter({"sequencer": proc.pid, "kafka": broker.pid})
        meter.start()
        if profile is not None and shutil.which("py-spy") and proc.pid is not None:
            spy = subprocess.Popen(  # noqa: S603 - our own tool on our own child
                ["py-spy", "record", "-p", str(proc.pid), "-o", str(profile), "-f", "speedscope", "-r", "50", "--idle"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        done = asyncio.run(wait_applied(broker.bootstrap, topics.room_events.name, len(items), 60 + total / 500))
        cores = meter.stop()
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        proc.stop()
    seconds = done - started
    say(f"  applied {len(items):,} commands in {seconds:.2f} s: {len(items) / seconds:,.0f}/s")
    return Run(total, leave_share, seconds, cores.get("sequencer"), cores.get("kafka"), 500)


def report(broker: Broker, runs: list[Run]) -> str:
    rows = [
        [
            f"{r.commands:,}",
            f"{r.leave_share:.0%}",
            f"{r.seconds:.2f}",
            f"{(r.commands + 1) / r.seconds:,.0f}",
            None if r.cpu_cores is None else f"{r.cpu_cores:.2f}",
            None if r.cpu_cores is None else f"{r.cpu_cores * r.seconds / r.commands * 1e6:.0f}",
            None if r.kafka_cores is None else f"{r.kafka_cores:.2f}",
        ]
        for r in runs
    ]
    table = markdown_table(
        [
            "commands",
            "leaves",
            "seconds",
            "commands applied /s",
            "sequencer CPU (cores)",
            "sequencer CPU µs/command",
            "Kafka CPU (cores)",
        ],
        rows,
    )
    return "\n".join(
        [
            run_facts(broker),
            "- workload: one room of capacity 100 (so almost every join waits), its configuration and then "
            "the commands, all on partition 0 of the commands topic before the sequencer starts; a join "
            "makes one event (TicketIssued, plus TicketAdmitted for the first 100), a leave one or two "
            "(TicketLeft, and the admission it frees)",
            "- sequencer: `WAITROOM_TICKETING_ROLE=sequencer`, transactions on (fencing; a fetched batch's "
            "events in one Kafka transaction, the command offset in it about once a second), INFO logs, "
            "telemetry off; timed from its `partition_owned` log line until an event of the last command is "
            "readable (read_committed)",
            "",
            table,
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sequencer_throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--commands", default="200000", help="comma-separated command counts (default 200000)")
    parser.add_argument("--leave-share", type=float, default=0.3, help="share of leaves among the commands")
    parser.add_argument("--profile", type=Path, help="write a py-spy speedscope profile of the sequencer here")
    parser.add_argument("--write-docs", action="store_true", help=f"write the '## {SECTION}' section")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("WARNING", "console", service="bench")
    sizes = [int(x) for x in args.commands.split(",") if x.strip()]
    with tempfile.TemporaryDirectory(prefix="waitroom-bench-") as tmp, broker_for_bench(Path(tmp)) as broker:
        runs = [measure(broker, Path(tmp), n, args.leave_share, args.profile) for n in sizes]
        text = report(broker, runs)
    sys.stdout.write(text + "\n")
    if args.write_docs:
        write_section(SECTION, text)
        say(f"wrote the '## {SECTION}' section of docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
