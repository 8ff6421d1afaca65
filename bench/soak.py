"""A bounded soak of the whole system on loopback: steady joins, heartbeats, leaves and expiries.

``python -m bench.soak [--duration 1800] [--rate 10] [--write-docs]``

It starts the system the way ``make dev`` does (``waitroom_devtools.devstack``: an embedded Kafka
unless ``KAFKA_BOOTSTRAP_SERVERS`` is set, every service of ``devstack.SERVICES`` as its own
process with the development settings) under topics of its own, except that the join limit per
client address is off (every join comes from this one address). Then, for ``--duration`` seconds:

- ``--rate`` joins per second (open loop: on schedule, whatever the answers take), spread over
  ``--rooms`` rooms with a short heartbeat timeout;
- every live ticket heartbeats at its room's interval for a lifetime drawn from
  ``--lifetime-min``..``--lifetime-max`` seconds; then ``--leave-fraction`` of them leave
  (``DELETE``, then a status call must answer 410 ``ticket_left``: read-your-writes) and the rest go
  silent, so the reaper expires them (a status poll must see 410 ``ticket_expired`` within the
  timeout plus ``EXPIRY_SLACK_S``);
- every few seconds the resident set (VmRSS) of every service process, and of Kafka's JVM when the
  bench started it, is sampled; a progress line goes to stderr every ``--progress-every`` s.

When the time is up it stops joining, lets every heartbeating ticket leave, waits for the silent
ones to be expired, and stops the stack: the run always ends (a hard deadline bounds the drain).

It reports: the answers by call and status; error answers (any answer not expected for the call,
any transport error: the target is 0); whether the queue numbers are dense (each room's numbers
from the join answers are exactly 1..N, and the room-events log holds the same N ``TicketIssued``
numbers once each); and per process the RSS at the end of the warm-up (``--warmup``, 20 % of the
run by default) and at the end, both as the median of their window of samples, as growth in
per cent (target <= 5 %) and as a least-squares slope in MB per hour.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    Broker,
    CpuMeter,
    create_room,
    markdown_table,
    rss_mb,
    run_facts,
    say,
    write_section,
)
from bench.stack import RunningStack, dev_stack
from waitroom_devtools import devstack
from waitroom_events.events import TicketExpired, TicketIssued, TicketLeft
from waitroom_platform.logging import configure_logging

SECTION = "Soak"
RSS_TARGET_PCT = 5.0
#: a silent ticket must be seen expired within its room's timeout plus this (the reaper's grace,
#: a poll's interval, a loaded machine)
EXPIRY_SLACK_S = 30.0
#: the drain after the last join: heartbeating tickets leave at once, silent ones need their timeout
DRAIN_LIMIT_S = 120.0
TRANSPORT_ERROR = 0  # the "status" of a request that got no answer
#: a visitor whose own gap between two signs of life exceeded this fraction of the timeout was late
CLIENT_LATE_FRACTION = 0.5


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 1800.0
    rate: float = 10.0
    warmup_s: float | None = None  # default: 20 % of the duration
    rooms: int = 2
    capacity: int = 50
    heartbeat_interval_s: float = 2.0
    heartbeat_timeout_s: float = 8.0
    lifetime_min_s: float = 4.0
    lifetime_max_s: float = 16.0
    leave_fraction: float = 0.75
    sample_every_s: float = 5.0
    progress_every_s: float = 30.0
    partitions: int = 3
    #: the client's connection pool: joins and leaves hold theirs while the API waits for the sequencer
    connections: int = 1000
    seed: int = 14

    @property
    def warmup(self) -> float:
        return self.duration_s * 0.2 if self.warmup_s is None else self.warmup_s

    def room_ids(self) -> list[str]:
        return [f"soak-{chr(ord('a') + i)}" for i in range(self.rooms)]


# ---------------------------------------------------------------------------------------------
# RSS


@dataclass
class RssSeries:
    name: str
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since the start, MB)

    def growth(self, warmup_s: float) -> RssGrowth | None:
        after = [(t, mb) for t, mb in self.samples if t >= warmup_s]
        if len(after) < 2:
            return None
        window = max(1, len(after) // 10)
        start = statistics.median(mb for _, mb in after[:window])
        end = statistics.median(mb for _, mb in after[-window:])
        slope = 0.0
        if len(after) >= 3 and len({t for t, _ in after}) > 1:
            slope = statistics.linear_regression([t for t, _ in after], [mb for _, mb in after]).slope * 3600
        return RssGrowth(
            self.name,
            first=self.samples[0][1],
            at_warmup=start,
            end=end,
            peak=max(mb for _, mb in after),
            growth_pct=(end - start) / start * 100 if start else 0.0,
            slope_mb_per_h=slope,
            samples=len(after),
        )


@dataclass(frozen=True)
class RssGrowth:
    name: str
    first: float
    at_warmup: float
    end: float
    peak: float
    growth_pct: float
    slope_mb_per_h: float
    samples: int


# ---------------------------------------------------------------------------------------------
# the load


@dataclass
class Tally:
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[tuple[str, int]] = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    #: queue numbers from the answers, per room, and the ticket each was given to
    numbers: dict[str, dict[str, int]] = field(default_factory=dict)
    joins: int = 0
    leaves: int = 0
    expiries: int = 0
    live: int = 0
    requests: int = 0
    #: tickets found expired after their own client left a gap over half the timeout between two
    #: signs of life (the bench starved of CPU): not a steady client, not counted as an error
    client_late: int = 0
    #: the most this process's event loop woke up late (a client starved of CPU is late for everything)
    loop_lag_max_s: float = 0.0
    loop_lag_recent_s: float = 0.0
    #: CPU of each process over the run, in cores (CPU s / wall s), the bench's own included
    cores: dict[str, float | None] = field(default_factory=dict)
    #: each room's ``last_queue_no`` by its public status call after the drain
    last_queue_no: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str, status: int, text: str) -> None:
        if (kind, status) not in self.errors:
            say(f"  first error answer of its kind: {kind} {status}: {text[:300]}")
        self.errors[(kind, status)] += 1
        if len(self.error_examples) < 20:
            self.error_examples.append(f"{kind} {status}: {text[:300]}")

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


#: connections per client: httpcore's pool looks at each of its connections for each request, so
#: one pool of a thousand costs the bench more CPU than the server spends; visitors share small ones
CONNECTIONS_PER_CLIENT = 20


class Load:
    def __init__(self, cfg: SoakConfig, api: str, clients: list[httpx.AsyncClient]) -> None:
        self.cfg = cfg
        self.api = api
        self.clients = clients
        self.tally = Tally()
        self.stopping = asyncio.Event()
        self.rng = random.Random(cfg.seed)

    async def call(
        self, http: httpx.AsyncClient, kind: str, method: str, path: str, expected: set[int], token: str | None = None
    ) -> httpx.Response | None:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        started = time.perf_counter()
        self.tally.requests += 1
        try:
            response = await http.request(method, self.api + path, headers=headers)
        except httpx.HTTPError as exc:
            self.tally.answers[(kind, TRANSPORT_ERROR)] += 1
            self.tally.error(kind, TRANSPORT_ERROR, repr(exc))
            return None
        self.tally.latencies.setdefault(kind, []).append(time.perf_counter() - started)
        self.tally.answers[(kind, response.status_code)] += 1
        if response.status_code not in expected:
            self.tally.error(kind, response.status_code, response.text)
            return None
        return response

    async def visitor(self, room: str, http: httpx.AsyncClient) -> None:
        tally = self.tally
        # When this visitor last gave a sign of life (the send of its join or of a heartbeat). A ticket
        # found expired although its client kept every gap between two signs within half the timeout
        # is an error of the system; one whose own client was later than that (this process starved
        # of CPU by other work on the machine) is counted apart: a steady client is what is tested.
        last_sign = time.monotonic()
        longest_gap = 0.0

        def sign() -> None:
            nonlocal last_sign, longest_gap
            now = time.monotonic()
            longest_gap = max(longest_gap, now - last_sign)
            last_sign = now

        def expired(kind: str, answer: httpx.Response, timeout: float) -> None:
            if answer.json().get("error") == "ticket_expired" and longest_gap > timeout * CLIENT_LATE_FRACTION:
                tally.client_late += 1
            else:
                tally.error(kind, answer.status_code, f"{answer.text} (longest gap {longest_gap:.1f} s)")

        joined = await self.call(http, "join", "POST", f"/v1/rooms/{room}/tickets", {201, 202})
        if joined is None:
            return
        tally.joins += 1
        ticket: dict[str, Any] = joined.json()
        token = ticket["ticket_token"]
        path = f"/v1/rooms/{room}/tickets/{ticket['ticket_id']}"
        timeout = self.cfg.heartbeat_timeout_s
        while joined.status_code == 202:
            # Sequenced later than the API's join wait: heartbeat (a pending ticket's heartbeat counts,
            # as the waiting page does it) until an answer carries the number.
            await asyncio.sleep(0.5)
            sign()
            polled = await self.call(http, "heartbeat (pending)", "POST", path + "/heartbeat", {200, 202, 410}, token)
            if polled is None:
                return
            if polled.status_code == 410:
                expired("heartbeat (pending)", polled, timeout)
                return
            joined, ticket = polled, polled.json()
        tally.numbers.setdefault(room, {})[ticket["ticket_id"]] = ticket["queue_no"]
        interval, timeout = ticket["heartbeat_interval_s"], ticket["heartbeat_timeout_s"]
        lifetime = self.rng.uniform(self.cfg.lifetime_min_s, self.cfg.lifetime_max_s)
        leaves = self.rng.random() < self.cfg.leave_fraction
        started = time.monotonic()
        ends_at = started + lifetime
        beats = 0
        tally.live += 1
        try:
            while time.monotonic() < ends_at and not self.stopping.is_set():
                # on a fixed schedule, every interval from the issue: a slow answer does not delay the next
                beats += 1
                delay = started + beats * interval - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), max(delay, 0.0))
                if self.stopping.is_set():
                    leaves = True  # the drain: every heartbeating ticket leaves
                    break
                sign()
                answer = await self.call(http, "heartbeat", "POST", path + "/heartbeat", {200, 410}, token)
                if answer is None:
                    return
                if answer.status_code == 410:
                    expired("heartbeat", answer, timeout)
                    return
        finally:
            tally.live -= 1
        if leaves:
            sign()
            if await self.call(http, "leave", "DELETE", path, {204}, token) is None:
                return
            after = await self.call(http, "status after leave", "GET", path, {410}, token)
            if after is None:
                return
            if after.json().get("error") != "ticket_left":
                expired("status after leave", after, timeout)
                return
            tally.leaves += 1
            return
        await asyncio.sleep(timeout)
        deadline = time.monotonic() + EXPIRY_SLACK_S
        while True:
            polled = await self.call(http, "status of a silent ticket", "GET", path, {200, 410}, token)
            if polled is None:
                return
            if polled.status_code == 410:
                if polled.json().get("error") != "ticket_expired":
                    tally.error("status of a silent ticket", 410, polled.text)
                    return
                tally.expiries += 1
                return
            if time.monotonic() > deadline:
                tally.error("silent ticket never expired", 200, polled.text)
                return
            await asyncio.sleep(1.0)

    async def joins(self, tasks: set[asyncio.Task[None]]) -> None:
        """``rate`` visitors a second, on schedule, for the duration."""
        rooms = self.cfg.room_ids()
        started = time.monotonic()
        n = 0
        while True:
            due = started + n / self.cfg.rate
            if due - started >= self.cfg.duration_s:
                return
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.visitor(rooms[n % len(rooms)], self.clients[n % len(self.clients)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class SoakResult:
    cfg: SoakConfig
    tally: Tally
    rss: dict[str, RssGrowth | None]
    dense: dict[str, str]  # per room: "" when dense, else what is wrong
    log_issued: dict[str, int]
    log_left: int
    log_expired: int
    elapsed_s: float
    died: list[str]
    broker: Broker
    #: records of room-events stats had read but not committed, after the drain (see stats_behind)
    stats_uncommitted: int = 0

    @property
    def numbers_dense(self) -> bool:
        return all(not problem for problem in self.dense.values())

    def rss_within(self, target_pct: float = RSS_TARGET_PCT) -> bool:
        return all(g is not None and g.growth_pct <= target_pct for g in self.rss.values())


def _rss_line(series: dict[str, RssSeries]) -> str:
    return "  ".join(f"{name} {s.samples[-1][1]:.0f}" for name, s in series.items() if s.samples)


async def _sample_rss(stack: RunningStack, series: dict[str, RssSeries], t0: float, every: float) -> None:
    pids = stack.pids()
    while True:
        now = time.monotonic() - t0
        for name, pid in pids.items():
            mb = rss_mb(pid)
            if mb is not None:
                series.setdefault(name, RssSeries(name)).samples.append((now, mb))
        await asyncio.sleep(every)


async def _watch_loop_lag(tally: Tally, every: float = 0.25) -> None:
    while True:
        before = time.monotonic()
        await asyncio.sleep(every)
        lag = time.monotonic() - before - every
        tally.loop_lag_max_s = max(tally.loop_lag_max_s, lag)
        tally.loop_lag_recent_s = max(tally.loop_lag_recent_s, lag)


async def _progress(load: Load, series: dict[str, RssSeries], t0: float, every: float) -> None:
    last_t, last_joins, last_requests = t0, 0, 0
    while True:
        await asyncio.sleep(every)
        now, tally = time.monotonic(), load.tally
        span = max(now - last_t, 1e-9)
        say(
            f"[{now - t0:6.0f} s] joins {(tally.joins - last_joins) / span:5.1f}/s  "
            f"requests {(tally.requests - last_requests) / span:6.1f}/s  live {tally.live:4d}  "
            f"left {tally.leaves}  expired {tally.expiries}  errors {tally.error_count}  client late "
            f"{tally.client_late} (loop lag {tally.loop_lag_recent_s:.1f} s)  RSS MB: {_rss_line(series)}"
        )
        tally.loop_lag_recent_s = 0.0
        last_t, last_joins, last_requests = now, tally.joins, tally.requests


def _create_rooms(stack: RunningStack, cfg: SoakConfig) -> None:
    config = {
        "capacity": cfg.capacity,
        "heartbeat_interval_s": cfg.heartbeat_interval_s,
        "heartbeat_timeout_s": cfg.heartbeat_timeout_s,
    }
    with httpx.Client(timeout=30) as http:
        for room in cfg.room_ids():
            create_room(http, stack.admin, stack.api, room, config, devstack.DEV_ADMIN_TOKEN, accepted=(200, 201))


async def _load(stack: RunningStack, cfg: SoakConfig, series: dict[str, RssSeries]) -> tuple[Tally, float]:
    per_client = min(cfg.connections, CONNECTIONS_PER_CLIENT)
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    async with contextlib.AsyncExitStack() as exits:
        clients = [
            await exits.enter_async_context(httpx.AsyncClient(timeout=15, limits=limits))
            for _ in range(max(1, cfg.connections // per_client))
        ]
        http = clients[0]
        load = Load(cfg, stack.api, clients)
        meter = CpuMeter(dict(stack.pids()))
        client_cpu = time.process_time()
        meter.start()
        t0 = time.monotonic()
        helpers = [
            asyncio.create_task(_sample_rss(stack, series, t0, cfg.sample_every_s)),
            asyncio.create_task(_progress(load, series, t0, cfg.progress_every_s)),
            asyncio.create_task(_watch_loop_lag(load.tally)),
        ]
        tasks: set[asyncio.Task[None]] = set()
        try:
            await load.joins(tasks)
            say(f"[{time.monotonic() - t0:6.0f} s] {cfg.duration_s:g} s of joins done; draining {len(tasks)} visitors")
            load.stopping.set()
            if tasks:
                _, pending = await asyncio.wait(set(tasks), timeout=cfg.heartbeat_timeout_s + EXPIRY_SLACK_S + 60)
                for task in pending:
                    task.cancel()
                    load.tally.error("visitor still running after the drain", TRANSPORT_ERROR, "")
        finally:
            for helper in helpers:
                helper.cancel()
            for task in list(tasks):
                task.cancel()
        elapsed = time.monotonic() - t0
        load.tally.cores = meter.stop()
        load.tally.cores["bench client"] = (time.process_time() - client_cpu) / elapsed
        statuses = {room: (await http.get(f"{stack.api}/v1/rooms/{room}")).json() for room in cfg.room_ids()}
    load.tally.last_queue_no = {room: int(s.get("last_queue_no", -1)) for room, s in statuses.items()}
    return load.tally, elapsed


async def _read_log(bootstrap: str, topic: str) -> tuple[dict[str, dict[str, int]], int, int]:
    """The queue number of every ``TicketIssued`` per room and ticket, and the counts of left and
    expired tickets."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from waitroom_events.codec import decode
    from waitroom_platform.kafka import partitions_of

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    issued: dict[str, dict[str, int]] = {}
    left = expired = 0
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=5000)
                for record in batch.get(tp, []):
                    message = decode(record.value, record.headers)
                    if isinstance(message, TicketIssued):
                        # a ticket issued twice would show as a number missing: its entry is replaced
                        issued.setdefault(message.room_id, {})[message.ticket_id] = message.queue_no
                    elif isinstance(message, TicketLeft):
                        left += 1
                    elif isinstance(message, TicketExpired):
                        expired += 1
    finally:
        await consumer.stop()
    return issued, left, expired


#: how long, after the drain, stats gets to commit what it has read (its commit interval is 2.8 s)
STATS_COMMIT_WAIT_S = 15.0


async def stats_behind(bootstrap: str, group: str, topic: str, wait_s: float = STATS_COMMIT_WAIT_S) -> int:
    """How many records of ``topic`` stats' group has not committed, at most over its partitions,
    once it has caught up or ``wait_s`` has passed. At most 1 when all is committed: a read_committed
    reader stops at a transaction's commit marker, which it is never given."""
    from waitroom_platform.admin import uncommitted

    deadline = time.monotonic() + wait_s
    while True:
        behind = max((await uncommitted(bootstrap, group, topic)).values(), default=0)
        if behind <= 1 or time.monotonic() > deadline:
            return behind
        await asyncio.sleep(0.5)


def density(cfg: SoakConfig, tally: Tally, log_issued: dict[str, dict[str, int]]) -> dict[str, str]:
    """Per room, what is wrong with its numbers ("" when they are dense).

    Dense: the room-events log issued every number 1..N exactly once, the room's public
    ``last_queue_no`` is N, and every number a join (or a pending ticket's heartbeat) answered is the
    one the log gave that ticket. A ticket whose join answered 202 and that ended before any answer
    carried its number is in the log only; those are counted, not errors.
    """
    problems = {}
    for room in cfg.room_ids():
        answered = tally.numbers.get(room, {})
        logged = log_issued.get(room, {})
        numbers = sorted(logged.values())
        wrong = []
        if numbers != list(range(1, len(numbers) + 1)):
            duplicates = sum(c - 1 for c in Counter(numbers).values() if c > 1)
            wrong.append(
                f"room-events: {len(numbers)} TicketIssued, {duplicates} numbers twice, max {max(numbers, default=0)}"
            )
        mismatched = [t for t, n in answered.items() if logged.get(t) != n]
        if mismatched:
            wrong.append(f"{len(mismatched)} answered numbers differ from the log's")
        if tally.last_queue_no.get(room) != len(numbers):
            wrong.append(f"room status last_queue_no {tally.last_queue_no.get(room)} for {len(numbers)} issued")
        problems[room] = "; ".join(wrong)
    return problems


def run_soak(
    cfg: SoakConfig, work_dir: Path, bootstrap: str | None = None, ticketing_env: Mapping[str, str] | None = None
) -> SoakResult:
    """The soak on a stack of its own in ``work_dir`` (its own broker unless ``bootstrap`` is given)."""
    series: dict[str, RssSeries] = {}
    with dev_stack(work_dir, cfg.partitions, bootstrap, ticketing_env) as stack:
        _create_rooms(stack, cfg)
        say(
            f"soaking for {cfg.duration_s:g} s: {cfg.rate:g} joins/s over {cfg.rooms} rooms, heartbeat every "
            f"{cfg.heartbeat_interval_s:g} s (timeout {cfg.heartbeat_timeout_s:g} s); pids {stack.pids()}"
        )
        tally, elapsed = asyncio.run(_load(stack, cfg, series))
        died = stack.dead()
        log_issued, log_left, log_expired = asyncio.run(_read_log(stack.bootstrap, stack.topics.room_events.name))
        uncommitted = asyncio.run(stats_behind(stack.bootstrap, stack.stats_group, stack.topics.room_events.name))
        broker = stack.broker
    return SoakResult(
        cfg=cfg,
        tally=tally,
        rss={name: s.growth(cfg.warmup) for name, s in series.items()},
        dense=density(cfg, tally, log_issued),
        log_issued={room: len(numbers) for room, numbers in log_issued.items()},
        log_left=log_left,
        log_expired=log_expired,
        elapsed_s=elapsed,
        died=died,
        broker=broker,
        stats_uncommitted=uncommitted,
    )


# ---------------------------------------------------------------------------------------------
# the report


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "–"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"


def _cores(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def report(result: SoakResult) -> str:
    cfg, tally = result.cfg, result.tally
    kinds = list(dict.fromkeys(kind for kind, _ in tally.answers))
    answers = [
        [
            kind,
            sum(n for (k, _), n in tally.answers.items() if k == kind),
            ", ".join(f"{s}×{n}" for (k, s), n in sorted(tally.answers.items()) if k == kind and n),
            sum(n for (k, _), n in tally.errors.items() if k == kind),
            _ms(tally.latencies.get(kind, []), 0.5),
            _ms(tally.latencies.get(kind, []), 0.99),
        ]
        for kind in kinds
    ]
    rss = [
        [
            g.name,
            f"{g.first:.1f}",
            f"{g.at_warmup:.1f}",
            f"{g.end:.1f}",
            f"{g.peak:.1f}",
            f"{g.growth_pct:+.1f} %",
            f"{g.slope_mb_per_h:+.1f}",
            "yes" if g.growth_pct <= RSS_TARGET_PCT else "**no**",
            _cores(tally.cores.get(g.name)),
        ]
        for g in result.rss.values()
        if g is not None
    ]
    rss.append(["bench client (this process)", *["–"] * 7, _cores(tally.cores.get("bench client"))])
    rss.append(["whole machine (everyone)", *["–"] * 7, _cores(tally.cores.get("machine"))])
    joins = sum(result.log_issued.values())
    dense_rows = [
        [
            room,
            result.log_issued.get(room, 0),
            len(tally.numbers.get(room, {})),
            result.log_issued.get(room, 0) - len(tally.numbers.get(room, {})),
            problem or "dense: 1..N once each, answers as logged",
        ]
        for room, problem in result.dense.items()
    ]
    verdict = [
        f"- error answers: **{tally.error_count}** (target 0)"
        + (f"; {dict(tally.errors)}; first: {tally.error_examples[:3]}" if tally.error_count else ""),
        f"- numbers dense in every room: **{'yes' if result.numbers_dense else 'no'}**",
        f"- RSS growth after the warm-up <= {RSS_TARGET_PCT:g} % for every process: "
        f"**{'yes' if result.rss_within() else 'no'}**",
        f"- the bench's own client: its event loop woke up at most {tally.loop_lag_max_s:.1f} s late; "
        f"{tally.client_late} tickets were found expired after the client itself left a gap over half the "
        "timeout between two signs of life (counted apart, not as errors: the client was not steady)",
        f"- stats' committed offsets on room-events after the drain: {result.stats_uncommitted} record(s) "
        "behind the log's end (at most 1 when all it read is committed: a transaction's commit marker)",
        f"- tickets: {joins} issued, {tally.leaves} left (each then answered 410 ticket_left), {tally.expiries} "
        f"expired by the reaper (each seen 410 ticket_expired); the log holds {result.log_left} TicketLeft and "
        f"{result.log_expired} TicketExpired",
    ]
    services = ", ".join(s.name for s in devstack.SERVICES)
    if result.died:
        verdict.append(f"- processes that exited during the run: {', '.join(result.died)}")
    parts = [
        run_facts(result.broker),
        f"- the system: `waitroom_devtools.devstack`'s services as `make dev` runs them ({services}) "
        f"with the development settings, {cfg.partitions} partitions, join limit per client address off",
        f"- load: {cfg.rate:g} joins/s for {cfg.duration_s:g} s ({result.elapsed_s:.0f} s with the drain) over "
        f"{cfg.rooms} rooms (capacity {cfg.capacity} each, heartbeat interval {cfg.heartbeat_interval_s:g} s, timeout "
        f"{cfg.heartbeat_timeout_s:g} s); each ticket heartbeats at the interval for {cfg.lifetime_min_s:g}–"
        f"{cfg.lifetime_max_s:g} s, then {cfg.leave_fraction * 100:.0f} % leave and the rest go silent and are "
        "expired; httpx client in the bench's process, "
        f"at most {cfg.connections} connections",
        f"- RSS: VmRSS of each process every {cfg.sample_every_s:g} s; warm-up {cfg.warmup:g} s; 'after warm-up' "
        "and 'end' are medians of the first and last tenth of the samples after it; the slope is a least-squares "
        "fit over them",
        "",
        markdown_table(["call", "answers", "statuses", "errors", "p50 ms", "p99 ms"], answers),
        "",
        markdown_table(
            [
                "process",
                "RSS at start MB",
                "after warm-up MB",
                "end MB",
                "peak MB",
                "growth",
                "slope MB/h",
                f"<= {RSS_TARGET_PCT:g} %",
                "CPU (cores)",
            ],
            rss,
        ),
        "",
        markdown_table(
            ["room", "TicketIssued in the log", "numbers answered", "ended while pending (never answered)", "density"],
            dense_rows,
        ),
        "",
        *verdict,
    ]
    return "\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = SoakConfig()
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds of joins (1800)")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="joins per second (10)")
    parser.add_argument("--warmup", type=float, help="seconds not counted for RSS growth (20 %% of the duration)")
    parser.add_argument("--rooms", type=int, default=defaults.rooms)
    parser.add_argument("--capacity", type=int, default=defaults.capacity, help="capacity of each room")
    parser.add_argument("--heartbeat-interval", type=float, default=defaults.heartbeat_interval_s)
    parser.add_argument("--heartbeat-timeout", type=float, default=defaults.heartbeat_timeout_s)
    parser.add_argument("--lifetime-min", type=float, default=defaults.lifetime_min_s)
    parser.add_argument("--lifetime-max", type=float, default=defaults.lifetime_max_s)
    parser.add_argument("--leave-fraction", type=float, default=defaults.leave_fraction)
    parser.add_argument("--sample-every", type=float, default=defaults.sample_every_s, help="RSS sampling (5 s)")
    parser.add_argument("--progress-every", type=float, default=defaults.progress_every_s, help="progress lines")
    parser.add_argument("--partitions", type=int, default=defaults.partitions)
    parser.add_argument("--connections", type=int, default=defaults.connections, help="client pool (1000)")
    parser.add_argument(
        "--write-docs", action="store_true", help=f"write the '## {SECTION}' section of docs/benchmarks.md"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("WARNING", "console", service="bench")
    cfg = SoakConfig(
        duration_s=args.duration,
        rate=args.rate,
        warmup_s=args.warmup,
        rooms=args.rooms,
        capacity=args.capacity,
        heartbeat_interval_s=args.heartbeat_interval,
        heartbeat_timeout_s=args.heartbeat_timeout,
        lifetime_min_s=args.lifetime_min,
        lifetime_max_s=args.lifetime_max,
        leave_fraction=args.leave_fraction,
        sample_every_s=args.sample_every,
        progress_every_s=args.progress_every,
        partitions=args.partitions,
        connections=args.connections,
    )
    with tempfile.TemporaryDirectory(prefix="waitroom-soak-") as tmp:
        result = run_soak(cfg, Path(tmp))  # broker_for_bench: KAFKA_BOOTSTRAP_SERVERS or an embedded Kafka
    text = report(result)
    sys.stdout.write(text + "\n")
    if args.write_docs:
        write_section(SECTION, text)
        say(f"wrote the '## {SECTION}' section of docs/benchmarks.md")
    ok = result.tally.error_count == 0 and result.numbers_dense and not result.died and result.rss_within()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
