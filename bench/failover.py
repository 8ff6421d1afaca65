"""Failover and cold start with sequencer snapshots, for partitions with histories of growing length.

``python -m bench.failover --events 10000,1000000,3000000 [--write-docs]``

For each size: fresh topics with one partition; the synthetic history of one busy room from
``bench.sequencer_recovery`` produced straight to room-events (every event names command offset 0,
and one command that changes nothing is at offset 0, so the commands topic ends where the history
leaves off and new joins are sequenced after it). Then:

1. cold start without a snapshot: an all-in-one ticketing process (API + sequencer) spawned on the
   log, timed to ``/readyz``; it replays the whole history and writes the partition's first
   snapshot (its ``snapshot_written`` log line gives the encode, compress and write costs);
2. cold start from the snapshot: a second all-in-one process spawned, timed to ``/readyz`` (its
   read model starts from the snapshot); both are now members of the sequencer group;
3. failover: once one of them owns the partition and a join answers 201, the owner is killed
   (SIGKILL) and joins are sent to the survivor one after the other until one answers 201: the time
   from the kill to that answer, split by the survivor's log: its ``partitions_assigned`` line
   (the group noticed the dead member, its session timeout, and the survivor rejoined), its
   ``partition_owned`` line (``recovery_s``: the takeover, fencing, snapshot load, the events after
   it), the rest (the pending joins sequenced, the read model and the API answering).
   Ticketing runs with its default session timeout, as shipped.

And, in this process without Kafka, the snapshot's size and cost per million tickets: a room of
``--snapshot-tickets`` tickets folded from the same synthetic history, encoded (the sequencer does
it in a worker thread while the partition waits), compressed (a worker thread), decoded (the
cyclic collector paused, in a worker thread, as the services do), with and without ended tickets
compacted out.

A broker of its own is started unless ``KAFKA_BOOTSTRAP_SERVERS`` is set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    Broker,
    base_url,
    broker_for_bench,
    fresh_topics,
    markdown_table,
    run_facts,
    say,
    ticketing_process,
    wait_for_log_event,
    write_section,
)
from bench.sequencer_recovery import ROOM, Produced, produce_history, synthetic_history
from waitroom_core.room import RoomState, evolve
from waitroom_core.snapshot import decode_rooms, encode_rooms, frame, unframe
from waitroom_devtools.procs import ServiceProcess
from waitroom_events.codec import encode
from waitroom_events.commands import LeaveRequested
from waitroom_events.events import TicketIssued
from waitroom_events.topics import TopicRegistry
from waitroom_platform.kafka import make_producer
from waitroom_platform.logging import configure_logging
from waitroom_platform.settings import KafkaSettings
from waitroom_platform.snapshots import collector_paused
from waitroom_ticketing.sequencer import SequencerOptions
from waitroom_ticketing.settings import TicketingSettings

SECTION = "Failover with snapshots"
#: what ticketing ships (WAITROOM_TICKETING_SESSION_TIMEOUT_MS is not set: the bench runs the default)
SESSION_TIMEOUT_MS: int = TicketingSettings.model_fields["session_timeout_ms"].default
HEARTBEAT_INTERVAL_MS = SequencerOptions("bench", session_timeout_ms=SESSION_TIMEOUT_MS).heartbeat_interval_ms
SNAPSHOT_EVERY_EVENTS = 5000
JOIN_WAIT_S = 2.0
KEEP_ENDED_S = 600.0  # the default of WAITROOM_TICKETING_SNAPSHOT_KEEP_ENDED_S


# ---------------------------------------------------------------------------------------------
# the snapshot's size and cost, in this process


@dataclass
class SnapshotCost:
    tickets: int
    kept_tickets: int
    body_mb: float
    compressed_mb: float
    encode_s: float
    compress_s: float
    decode_s: float
    compacted_compressed_mb: float
    compacted_encode_s: float


def snapshot_cost(tickets: int) -> SnapshotCost:
    room = RoomState(ROOM)
    issued = 0
    for _, event in synthetic_history(10**12):
        evolve(room, event)
        if isinstance(event, TicketIssued):
            issued += 1
            if issued >= tickets:
                break
    started = time.perf_counter()
    body, count = encode_rooms([room])
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    framed = frame(body, rooms=count, partition=0, snapshot_id=0, next_offset=0, events_offset=0, taken_at=0.0)
    compress_s = time.perf_counter() - started
    started = time.perf_counter()
    with collector_paused():  # as SnapshotStore.load decodes
        decode_rooms(unframe(framed.manifest, dict(enumerate(framed.chunks))))
    decode_s = time.perf_counter() - started
    started = time.perf_counter()
    compacted, _ = encode_rooms([room], KEEP_ENDED_S)
    compacted_encode_s = time.perf_counter() - started
    compacted_framed = frame(compacted, rooms=1, partition=0, snapshot_id=0, next_offset=0, events_offset=0, taken_at=0)
    kept = decode_rooms(unframe(compacted_framed.manifest, dict(enumerate(compacted_framed.chunks))))
    return SnapshotCost(
        tickets=len(room.tickets),
        kept_tickets=len(kept[ROOM].tickets),
        body_mb=len(body) / 1e6,
        compressed_mb=framed.manifest.compressed_bytes / 1e6,
        encode_s=encode_s,
        compress_s=compress_s,
        decode_s=decode_s,
        compacted_compressed_mb=compacted_framed.manifest.compressed_bytes / 1e6,
        compacted_encode_s=compacted_encode_s,
    )


# ---------------------------------------------------------------------------------------------
# failover and cold start


@dataclass
class Failover:
    events: int
    produced: Produced
    cold_log_s: float
    cold_snapshot_s: float
    written: dict[str, Any]
    failover_s: float
    #: kill -9 -> the survivor's ``partitions_assigned`` line: the group noticing the dead member, the rejoin
    assigned_s: float
    takeover: dict[str, Any]
    found: dict[str, Any]
    joins_before_201: int


def log_events(proc: ServiceProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if f'"{event}"' in line:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == event:
                found.append(entry)
    return found


def owns(proc: ServiceProcess) -> bool:
    """Whether the last ownership line of ``proc`` says it owns the partition."""
    last = None
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if '"partition_owned"' in line:
            last = True
        elif '"partition_released"' in line:
            last = False
    return bool(last)


async def produce_noop_command(bootstrap: str, topics: TopicRegistry) -> None:
    """Offset 0 of the commands topic: the command every history event names (it changes nothing)."""
    producer = make_producer(KafkaSettings(bootstrap_servers=bootstrap))
    await producer.start()
    try:
        command = LeaveRequested(room_id=ROOM, ticket_id="nobody", requested_at=0.0)
        record = encode(command)
        await producer.send_and_wait(
            topics.commands.name, record.value, key=record.key, headers=record.headers, partition=0
        )
    finally:
        await producer.stop()


def join_until_201(http: httpx.Client, url: str, deadline: float) -> tuple[float, int]:
    """Joins one after the other until one answers 201: when it did, and how many did not."""
    misses = 0
    while time.monotonic() < deadline:
        try:
            response = http.post(f"{url}/v1/rooms/{ROOM}/tickets")
        except httpx.HTTPError:
            misses += 1
            time.sleep(0.05)
            continue
        if response.status_code == 201:
            return time.monotonic(), misses
        misses += 1
    raise TimeoutError(f"no join answered 201 by {url}")


def measure_failover(broker: Broker, work_dir: Path, total: int) -> Failover:
    topics = fresh_topics(broker.bootstrap, partitions=1)
    say(f"{total} events: producing ...")
    produced = asyncio.run(produce_history(broker.bootstrap, topics, total, source_offset=0))
    produced.sample.clear()
    asyncio.run(produce_noop_command(broker.bootstrap, topics))
    settings = {
        "WAITROOM_TICKETING_SNAPSHOT_EVERY_EVENTS": str(SNAPSHOT_EVERY_EVENTS),
        "WAITROOM_TICKETING_SNAPSHOT_KEEP_ENDED_S": str(KEEP_ENDED_S),
        "WAITROOM_TICKETING_JOIN_WAIT_S": str(JOIN_WAIT_S),
    }
    timeout = 120 + total / 2000
    first = ticketing_process(broker.bootstrap, topics, work_dir, name=f"first-{total}", **settings)
    second = ticketing_process(broker.bootstrap, topics, work_dir, name=f"second-{total}", **settings)
    procs = [first, second]
    try:
        say(f"  produced in {produced.seconds:.1f} s; cold start from the log ...")
        spawned = time.monotonic()
        first.start()
        first.wait_ready(timeout)
        cold_log_s = time.monotonic() - spawned
        written = wait_for_log_event(first, "snapshot_written", timeout)
        say(f"  ready after {cold_log_s:.1f} s, snapshot of {written['bytes'] / 1e6:.1f} MB; cold start from it ...")
        spawned = time.monotonic()
        second.start()
        second.wait_ready(timeout)
        cold_snapshot_s = time.monotonic() - spawned
        with httpx.Client(timeout=30) as http:
            deadline = time.monotonic() + timeout
            while True:  # the group settled: one owner, and it sequences
                owners = [proc for proc in procs if owns(proc)]
                if len(owners) == 1:
                    join_until_201(http, base_url(second), deadline)
                    if [proc for proc in procs if owns(proc)] == owners:
                        break
                time.sleep(0.2)
            owner = owners[0]
            survivor = second if owner is first else first
            taken_before = len(log_events(survivor, "partition_owned"))
            assigned_before = len(log_events(survivor, "partitions_assigned"))
            say(f"  ready after {cold_snapshot_s:.1f} s; killing {owner.name} (kill -9) ...")
            killed_at = time.time()
            killed = time.monotonic()
            owner.kill()
            answered, misses = join_until_201(http, base_url(survivor), killed + timeout)
        failover_s = answered - killed
        takeover = log_events(survivor, "partition_owned")[taken_before:][0]
        assigned = log_events(survivor, "partitions_assigned")[assigned_before:][0]
        assigned_s = datetime.fromisoformat(assigned["timestamp"]).timestamp() - killed_at
        found = log_events(survivor, "snapshot_found")[-1]
        say(f"  first 201 from {survivor.name} {failover_s:.2f} s after the kill (takeover {takeover['recovery_s']} s)")
    finally:
        for proc in procs:
            proc.stop()
    return Failover(
        events=total,
        produced=produced,
        cold_log_s=cold_log_s,
        cold_snapshot_s=cold_snapshot_s,
        written=written,
        failover_s=failover_s,
        assigned_s=assigned_s,
        takeover=takeover,
        found=found,
        joins_before_201=misses,
    )


# ---------------------------------------------------------------------------------------------
# the report


def failover_table(results: list[Failover]) -> str:
    headers = [
        "events",
        "tickets",
        "snapshot MB",
        "cold start from the log s",
        "cold start from the snapshot s",
        "kill -9 → first 201 s",
        "takeover s",
        "snapshot load s",
        "events replayed after it",
        "kill → survivor assigned s",
        "owned → first 201 s",
    ]
    rows = [
        [
            f"{r.events:,}",
            f"{r.produced.mix.get('TicketIssued', 0):,}",
            f"{r.written['bytes'] / 1e6:.2f}",
            f"{r.cold_log_s:.2f}",
            f"{r.cold_snapshot_s:.2f}",
            f"{r.failover_s:.2f}",
            f"{r.takeover['recovery_s']:.2f}",
            r.found.get("snapshot_load_s"),
            f"{r.takeover['events_replayed']:,}",
            f"{r.assigned_s:.2f}",
            f"{r.failover_s - r.assigned_s - r.takeover['recovery_s']:.2f}",
        ]
        for r in results
    ]
    return markdown_table(headers, rows)


def write_cost_table(results: list[Failover]) -> str:
    headers = [
        "events",
        "rooms",
        "body MB",
        "compressed MB",
        "chunks",
        "encode ms (thread; the partition waits)",
        "compress ms (thread)",
        "write ms",
    ]
    rows = [
        [
            f"{r.events:,}",
            r.written["rooms"],
            f"{r.written['body_bytes'] / 1e6:.2f}",
            f"{r.written['bytes'] / 1e6:.2f}",
            r.written["chunks"],
            r.written["encode_ms"],
            r.written["compress_ms"],
            r.written["write_ms"],
        ]
        for r in results
    ]
    return markdown_table(headers, rows)


def cost_table(cost: SnapshotCost) -> str:
    per = 1e6 / cost.tickets
    headers = ["tickets", "kept", "body MB", "compressed MB", "encode s", "compress s", "decode s"]
    rows = [
        [
            f"{cost.tickets:,} (all kept)",
            f"{cost.tickets:,}",
            f"{cost.body_mb:.1f}",
            f"{cost.compressed_mb:.1f}",
            f"{cost.encode_s:.2f}",
            f"{cost.compress_s:.2f}",
            f"{cost.decode_s:.2f}",
        ],
        [
            "per 1 M tickets",
            "",
            f"{cost.body_mb * per:.1f}",
            f"{cost.compressed_mb * per:.1f}",
            f"{cost.encode_s * per:.2f}",
            f"{cost.compress_s * per:.2f}",
            f"{cost.decode_s * per:.2f}",
        ],
        [
            f"{cost.tickets:,}, ended > {KEEP_ENDED_S:.0f} s compacted out",
            f"{cost.kept_tickets:,}",
            "",
            f"{cost.compacted_compressed_mb:.1f}",
            f"{cost.compacted_encode_s:.2f}",
            "",
            "",
        ],
    ]
    return markdown_table(headers, rows)


def conclusion(results: list[Failover], cost: SnapshotCost | None) -> list[str]:
    largest = max(results, key=lambda r: r.events)
    smallest = min(results, key=lambda r: r.events)
    takeovers = [r.takeover["recovery_s"] for r in results]
    target = "meets" if largest.takeover["recovery_s"] <= 5 else "misses"
    failover_target = "meets" if largest.failover_s <= 5 else "misses"
    assigned = [r.assigned_s for r in results]
    after = [r.failover_s - r.assigned_s - r.takeover["recovery_s"] for r in results]
    lines = [
        f"- Takeover (partition assigned → sequencing: fencing, snapshot load, the events after it) took "
        f"{min(takeovers):.2f}–{max(takeovers):.2f} s from {smallest.events:,} to {largest.events:,} events of "
        f"history: flat in the history's length, and it {target} the 5 s target at {largest.events:,} events "
        f'(before snapshots, docs\' "Sequencer recovery": about 21 s per million events).',
        f"- Kill -9 → first 201 on the survivor: {', '.join(f'{r.failover_s:.2f} s' for r in results)} at "
        f"{', '.join(f'{r.events:,}' for r in results)} events: it {failover_target} the 5 s target at "
        f"{largest.events:,} events, with ticketing's defaults as `make dev` starts it. Most of it is the group "
        f"noticing the dead member: kill → the survivor's `partitions_assigned` took "
        f"{min(assigned):.2f}–{max(assigned):.2f} s: the session timeout "
        f"(`WAITROOM_TICKETING_SESSION_TIMEOUT_MS`, {SESSION_TIMEOUT_MS} ms by default, counted from the dead "
        f"member's last group heartbeat, up to {HEARTBEAT_INTERVAL_MS} ms before the kill; the brokers waitroom "
        "starts allow sessions from 1 s, Kafka's own default floor `group.min.session.timeout.ms` is 6 s), then "
        f"the survivor hearing of the rebalance at its next heartbeat (within {HEARTBEAT_INTERVAL_MS} ms) and "
        "rejoining. After the takeover, the joins waiting in the log are "
        f"sequenced and the first answers 201 within {min(after):.2f}–{max(after):.2f} s. None of it grows "
        "with the history.",
        f"- Cold start of an all-in-one process: {largest.cold_log_s:.1f} s from the log against "
        f"{largest.cold_snapshot_s:.1f} s from the snapshot at {largest.events:,} events (the read model "
        "starts from the same snapshots).",
        f"- The snapshot itself: {largest.written['bytes'] / 1e6:.2f} MB compressed at {largest.events:,} events "
        f"({largest.written['encode_ms']} ms to encode, in a worker thread while the partition waits, the only "
        f"part that holds up sequencing; compression in a thread, {largest.written['compress_ms']} ms; writing "
        f"{largest.written['write_ms']} ms). Ended tickets more than {KEEP_ENDED_S:.0f} s older than the "
        "room's newest event are compacted out, so the snapshot follows the live queue, not the history.",
    ]
    if cost is not None:
        per = 1e6 / cost.tickets
        lines.append(
            f"- Per million tickets kept (none compacted out): {cost.body_mb * per:.0f} MB encoded, "
            f"{cost.compressed_mb * per:.0f} MB compressed, {cost.encode_s * per:.2f} s to encode (a pause of "
            f"the partition's sequencing), {cost.compress_s * per:.2f} s to compress (a worker thread), "
            f"{cost.decode_s * per:.2f} s to decode (at a takeover). A room that keeps a million tickets alive "
            "pauses its partition for that long once per snapshot (every "
            "`WAITROOM_TICKETING_SNAPSHOT_EVERY_EVENTS`, 100,000 by default, or `_EVERY_S`, 60). Encoding and "
            "decoding run in worker threads, so they hold up neither the group's heartbeats nor the API of the "
            "same process (a 3 s session tolerates an event loop stalled for 2.5 s, docs/adr/0007)."
        )
    return lines


def report(broker: Broker, results: list[Failover], cost: SnapshotCost | None) -> str:
    parts = [
        run_facts(broker),
        "- log: the synthetic room of `bench.sequencer_recovery` (capacity 100, about 2000 waiting, "
        "2.8 events per visitor) on a one-partition topic set; every event names command offset 0",
        f"- ticketing: two all-in-one processes (API + sequencer), snapshots every {SNAPSHOT_EVERY_EVENTS} "
        f"events, session timeout {SESSION_TIMEOUT_MS} ms (the default; group heartbeat every "
        f"{HEARTBEAT_INTERVAL_MS} ms), join wait {JOIN_WAIT_S:.0f} s (a join answers 202 "
        "after it; the loop then sends the next), transactions on",
        "- cold start: spawn → `/readyz` 200 (Python start-up, the read model caught up, the sequencer in its "
        "group); takeover: `recovery_s` of the survivor's `partition_owned` line; snapshot load: its "
        "`snapshot_found` line",
        "",
        failover_table(results),
        "",
        "The first snapshot of each log, written by the first process after its replay (`snapshot_written`):",
        "",
        write_cost_table(results),
    ]
    if cost is not None:
        parts += [
            "",
            "Snapshot size and cost per million tickets, in the bench process (no Kafka), one room folded "
            "from the same synthetic history:",
            "",
            cost_table(cost),
        ]
    parts += ["", "Conclusion:", "", *conclusion(results, cost)]
    return "\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="10000,1000000,3000000", help="comma-separated log lengths")
    parser.add_argument(
        "--snapshot-tickets", type=int, default=1_000_000, help="tickets of the in-process cost (0: skip it)"
    )
    parser.add_argument(
        "--write-docs", action="store_true", help=f"write the '## {SECTION}' section of docs/benchmarks.md"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("WARNING", "console", service="bench")
    sizes = [int(x) for x in args.events.split(",") if x.strip()]
    cost = None
    if args.snapshot_tickets:
        say(f"snapshot cost of {args.snapshot_tickets:,} tickets ...")
        cost = snapshot_cost(args.snapshot_tickets)
    with tempfile.TemporaryDirectory(prefix="waitroom-bench-") as tmp, broker_for_bench(Path(tmp)) as broker:
        results = [measure_failover(broker, Path(tmp), size) for size in sizes]
        text = report(broker, results, cost)
    sys.stdout.write(text + "\n")
    if args.write_docs:
        write_section(SECTION, text)
        say(f"wrote the '## {SECTION}' section of docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
