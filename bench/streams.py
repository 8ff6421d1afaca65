"""Many open ticket streams on ONE API process: memory, idle CPU, push latency.

``python -m bench.streams --streams 10000 [--write-docs]``

One run starts what it measures: a Kafka broker (an embedded one unless ``KAFKA_BOOTSTRAP_SERVERS``
is set), topics under a fresh prefix and ONE ticketing process (API and sequencer). It creates a
room of capacity 1, joins ``--streams + 1`` tickets (the first is admitted, the rest wait) and
opens one Server-Sent Events stream per waiting ticket from this process (plain asyncio sockets on
loopback, a few hundred bytes of state per stream). Then:

- RSS per stream: the API process's resident memory with every stream open, minus before, / streams;
- idle CPU: the API process's CPU over ``--idle-s`` with every stream open and nothing happening
  (it still heartbeats on every visitor's behalf, one per room interval, in batched records);
- one admission: a leave of the admitted ticket; from sending the leave to the ``ticket`` event
  announcing the admission on the next ticket's stream (so it includes the sequencer's round trip);
- a position update to all: from the same leave to the moment the last of the other streams
  received its new position (the room's streams are woken together, at most once a second).

The client is bounded and stops itself: every wait has a deadline (``--max-s`` overall), and the
streams are closed and the processes stopped whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer

from bench.common import (
    ADMIN_TOKEN,
    TICKET_SECRET,
    CpuMeter,
    admin_url,
    base_url,
    broker_for_bench,
    fresh_topics,
    markdown_table,
    rss_mb,
    run_facts,
    say,
    ticketing_process,
    write_section,
)
from waitroom_events.codec import decode, encode
from waitroom_events.commands import JoinRequested
from waitroom_events.events import TicketAdmitted
from waitroom_events.topics import TopicRegistry
from waitroom_platform.kafka import make_producer
from waitroom_platform.logging import configure_logging
from waitroom_platform.settings import KafkaSettings
from waitroom_ticketing.tokens import TicketTokens

SECTION = "Ticket streams"
#: how many streams reached their trial's target position (one counter: the wait checks an int)
REACHED = [0]
ROOM = "bench-streams"


@dataclass(slots=True)
class Stream:
    """One open stream, as this client sees it: the last ticket event and when it came."""

    ticket: dict[str, Any]
    state: str | None = None
    position: int | None = None
    changed_at: float = 0.0
    events: int = 0
    #: the position this stream waits for (a trial's expectation); ``reached`` counts arrivals
    target: int | None = None
    writer: asyncio.StreamWriter | None = None
    reader_task: asyncio.Task[None] | None = None
    first: asyncio.Event = field(default_factory=asyncio.Event)


async def join_all(bootstrap: str, topics: TopicRegistry, admin: str, count: int) -> list[dict[str, Any]]:
    """``count`` tickets, in queue order. The joins are written straight to the commands topic (the
    join call is not what this bench measures, and through HTTP it would take minutes on a busy
    machine); each ticket's token is the one the API would have answered (same secret)."""
    tokens = TicketTokens(TICKET_SECRET)
    tickets = [{"ticket_id": str(uuid.uuid4())} for _ in range(count)]
    for ticket in tickets:
        ticket["ticket_token"] = tokens.token_for(ROOM, ticket["ticket_id"])
    producer = make_producer(KafkaSettings(bootstrap_servers=bootstrap))
    await producer.start()
    try:
        for ticket in tickets:  # one producer, one partition: queue numbers in this order
            message = JoinRequested(room_id=ROOM, ticket_id=ticket["ticket_id"], requested_at=time.time())
            await producer.send(topics.commands.name, **_record(message))
        await producer.flush()
    finally:
        await producer.stop()
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        deadline = time.monotonic() + 300
        while (await http.get(f"{admin}/v1/admin/rooms/{ROOM}")).json()["last_queue_no"] < count:
            if time.monotonic() > deadline:
                raise TimeoutError("the joins were not sequenced")
            await asyncio.sleep(0.2)
    return tickets


def _record(message: JoinRequested) -> dict[str, Any]:
    encoded = encode(message)
    return {"key": encoded.key, "value": encoded.value, "headers": encoded.headers}


async def watch_admissions(bootstrap: str, topic: str, seen: dict[str, float]) -> None:
    """When this client first reads each ``TicketAdmitted`` (read-committed: when it is readable)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, isolation_level="read_committed", fetch_max_wait_ms=5
    )
    await consumer.start()
    try:
        async for record in consumer:
            message = decode(record.value, record.headers)
            if isinstance(message, TicketAdmitted):
                seen.setdefault(message.ticket_id, time.monotonic())
    finally:
        await consumer.stop()


async def open_stream(port: int, stream: Stream) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ticket = stream.ticket
    request = (
        f"GET /v1/rooms/{ROOM}/tickets/{ticket['ticket_id']}/events HTTP/1.1\r\nHost: bench\r\n"
        f"Authorization: Bearer {ticket['ticket_token']}\r\nAccept: text/event-stream\r\n\r\n"
    )
    writer.write(request.encode())
    stream.writer = writer
    stream.reader_task = asyncio.create_task(read_events(reader, stream))


async def read_events(reader: asyncio.StreamReader, stream: Stream) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"data: {") and b'"state"' in line:
                # chunked transfer encoding puts the SSE lines inside chunks: the data line is intact
                data = orjson.loads(line[6:])
                stream.state = data.get("state")
                stream.position = data.get("position")
                stream.changed_at = time.monotonic()
                if stream.target is not None and stream.position == stream.target:
                    stream.target = None
                    REACHED[0] += 1
                stream.events += 1
                stream.first.set()


def api_rss_mb(pid: int) -> float:
    """The API's resident set in MB; the bench cannot go on without its process."""
    mb = rss_mb(pid)
    if mb is None:
        raise RuntimeError(f"the API process {pid} is gone")
    return mb


async def wait_for(condition: Any, timeout_s: float, what: str) -> float:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout_s:g} s")
        await asyncio.sleep(0.005)
    return time.monotonic()


async def run(
    args: argparse.Namespace, bootstrap: str, topics: TopicRegistry, base: str, admin: str, pid: int
) -> dict[str, Any]:
    port = int(base.rsplit(":", 1)[1])
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.put(
            f"{admin}/v1/admin/rooms/{ROOM}",
            json={"capacity": 1, "heartbeat_timeout_s": 20, "heartbeat_interval_s": 5},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        response.raise_for_status()
    say(f"joining {args.streams + 1} tickets ...")
    started = time.monotonic()
    tickets = await join_all(bootstrap, topics, admin, args.streams + 1)
    joins_s = time.monotonic() - started
    admitted, waiting = tickets[0], tickets[1:]
    await asyncio.sleep(2)  # let the joins' allocations settle before the baseline
    rss_before = api_rss_mb(pid)
    say(f"opening {len(waiting)} streams ...")
    streams = [Stream(ticket) for ticket in waiting]
    gate = asyncio.Semaphore(200)

    async def open_one(stream: Stream) -> None:
        async with gate:
            await open_stream(port, stream)
            await asyncio.wait_for(stream.first.wait(), 60)

    started = time.monotonic()
    try:
        await asyncio.gather(*(open_one(s) for s in streams))
        open_s = time.monotonic() - started
        await asyncio.sleep(2)
        rss_after = api_rss_mb(pid)
        say(f"idle for {args.idle_s:g} s with every stream open ...")
        meter = CpuMeter({"api": pid})
        meter.start()
        await asyncio.sleep(args.idle_s)
        idle_cores = meter.stop()["api"]

        admission_ms: list[float] = []
        readable_ms: list[float] = []
        fanout_ms: list[float] = []
        seen: dict[str, float] = {}
        watcher = asyncio.create_task(watch_admissions(bootstrap, topics.room_events.name, seen))
        await asyncio.sleep(3)  # the watcher has read the log's end
        leaving = admitted
        async with httpx.AsyncClient(timeout=30) as http:
            for trial in range(args.trials):
                head, rest = streams[trial], streams[trial + 1 :]
                REACHED[0] = 0
                for stream in rest:
                    stream.target = None if stream.position is None else stream.position - 1
                await asyncio.sleep(1.2)  # past the room's last position batch: measure a fresh one
                sent = time.monotonic()
                response = await http.delete(
                    f"{base}/v1/rooms/{ROOM}/tickets/{leaving['ticket_id']}",
                    headers={"Authorization": f"Bearer {leaving['ticket_token']}"},
                )
                response.raise_for_status()
                pushed = await wait_for(lambda h=head: h.state == "admitted", 30, "the admission")
                admission_ms.append((pushed - sent) * 1000)
                readable = await wait_for(lambda h=head: h.ticket["ticket_id"] in seen, 30, "the watcher")
                readable_ms.append((pushed - seen[head.ticket["ticket_id"]]) * 1000)
                del readable
                try:
                    await wait_for(lambda n=len(rest): REACHED[0] >= n, 120, "the positions")
                except TimeoutError:
                    behind = [s for s in rest if s.target is not None]
                    sample = [(s.position, s.target, s.events) for s in behind[:5]]
                    say(f"{len(behind)} streams without their new position, e.g. (position, wanted, events): {sample}")
                    raise
                last = max(s.changed_at for s in rest)
                fanout_ms.append((last - sent) * 1000)
                say(f"trial {trial}: admission {admission_ms[-1]:.0f} ms, all positions {fanout_ms[-1]:.0f} ms")
                leaving = head.ticket
        watcher.cancel()
    finally:
        for stream in streams:
            if stream.writer is not None:
                stream.writer.close()
            if stream.reader_task is not None:
                stream.reader_task.cancel()
        await asyncio.gather(*(s.reader_task for s in streams if s.reader_task), return_exceptions=True)
    return {
        "streams": len(streams),
        "joins_s": joins_s,
        "open_s": open_s,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "idle_cores": idle_cores,
        "admission_ms": admission_ms,
        "readable_ms": readable_ms,
        "fanout_ms": fanout_ms,
    }


def report(args: argparse.Namespace, facts: str, r: dict[str, Any]) -> str:
    per_stream_kb = (r["rss_after"] - r["rss_before"]) * 1024 / r["streams"]
    adm, fan, readable = r["admission_ms"], r["fanout_ms"], r["readable_ms"]
    rows = [
        ["open streams", f"{r['streams']:,}"],
        ["time to open them all (200 at a time)", f"{r['open_s']:.1f} s"],
        ["API RSS before / with the streams", f"{r['rss_before']:.0f} MB / {r['rss_after']:.0f} MB"],
        ["RSS per stream", f"{per_stream_kb:.1f} KB"],
        [
            f"API CPU while idle ({args.idle_s:g} s, heartbeats on behalf included)",
            f"{r['idle_cores'] * 100:.1f} % of a core",
        ],
        [
            f"one admission pushed, leave sent → event (median / max of {len(adm)})",
            f"{statistics.median(adm):.0f} ms / {max(adm):.0f} ms",
        ],
        [
            f"one admission pushed, TicketAdmitted readable → event (median / max of {len(readable)})",
            f"{statistics.median(readable):.0f} ms / {max(readable):.0f} ms",
        ],
        [
            f"position update to all {r['streams'] - 1:,} others (median / max of {len(fan)})",
            f"{statistics.median(fan):.0f} ms / {max(fan):.0f} ms",
        ],
    ]
    return "\n".join(
        [
            facts,
            f"- room: capacity 1, heartbeat interval 5 s, timeout 20 s; {r['streams'] + 1:,} tickets joined "
            f"in {r['joins_s']:.1f} s (JoinRequested written to the commands topic); "
            "one stream per waiting ticket from one asyncio client on loopback",
            "- one admission: a leave of the admitted ticket (the sequencer's round trip included); "
            "position update: until every other stream holds its position minus one",
            "",
            markdown_table(["measure", "value"], rows),
            "",
            "Conclusion:",
            "",
            f"- {r['streams']:,} open streams cost {per_stream_kb:.0f} KB each in the API process "
            f"({(r['rss_after'] - r['rss_before']):.0f} MB in all: uvicorn's connection, the response task, "
            "the stream's generator and its place in the hub); memory, not CPU, sets how many a replica holds.",
            f"- Idle, the process used {r['idle_cores'] * 100:.0f} % of a core: the sequencer and the tails "
            f"polling Kafka, a comment per stream every 15 s and {r['streams']:,} heartbeats per 5 s on the "
            "visitors' behalf, passed by the hub into the per-room coalescer (a few records per interval, no "
            "stream task woken for them). The same visitors polling would be 2,000 HTTP requests a second.",
            f"- An admission reaches its stream {statistics.median(readable):.0f} ms (median) after the event is "
            "readable, with every other stream of the room open: the admitted ticket's own stream is woken at "
            "once, the room's position batch 10 ms later.",
            f"- A position change reaches all {r['streams'] - 1:,} other streams in "
            f"{statistics.median(fan) / 1000:.1f} s "
            "(median): every stream rereads its ticket and writes one event, one Python event loop for all, on a "
            "machine shared with the client reading the 10,000 streams and other work. Position updates are batched "
            "per room and second, so a busier room does not cost more than one such pass a second.",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--max-s", type=float, default=600.0, help="the whole run's deadline")
    parser.add_argument("--write-docs", action="store_true", help=f"write the '## {SECTION}' section")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("WARNING", "console", service="bench")
    with tempfile.TemporaryDirectory(prefix="waitroom-bench-") as tmp, broker_for_bench(Path(tmp)) as broker:
        topics = fresh_topics(broker.bootstrap, 1)
        ticketing = ticketing_process(broker.bootstrap, topics, Path(tmp)).start()
        try:
            ticketing.wait_ready(90)
            pid = ticketing.pid
            assert pid is not None
            result = asyncio.run(
                asyncio.wait_for(
                    run(args, broker.bootstrap, topics, base_url(ticketing), admin_url(ticketing), pid), args.max_s
                )
            )
        except BaseException:
            say(f"ticketing log tail:\n{ticketing.log_tail()}")
            raise
        finally:
            ticketing.stop()
        text = report(args, run_facts(broker), result)
    sys.stdout.write(text + "\n")
    if args.write_docs:
        write_section(SECTION, text)
        say(f"wrote the '## {SECTION}' section of docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
