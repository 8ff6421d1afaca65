"""Joins and heartbeats per second through the real ticketing API and Kafka, against bare FastAPI.

``python -m bench.http_joins --duration 20 --connections 32 [--write-docs]``

One run starts everything it measures: a Kafka broker (an embedded one of its own unless
``KAFKA_BOOTSTRAP_SERVERS`` is set), topics under a fresh prefix, ONE ticketing process (API and
sequencer, join rate limit off) and the baseline app (``bench/baseline_app.py``: bare FastAPI
endpoints of the same shapes, served the same way). Then, back to back, for each request shape
(join, heartbeat) it loads the baseline and then ticketing with the same client, connections and
duration. Machines running other work make absolute figures noisy; the ratio ticketing/baseline of
one run is the figure to read.

``--system dev`` measures the whole system instead, as ``make dev`` starts it (``bench/stack.py``:
moto, the reaper, the notifier and stats beside ticketing, each its own process). The other
services' CPU goes in a column of its own and in a table per service, and the report is written to
the section "Ticketing HTTP, whole system".

The client is ``wrk`` when installed (cheap: one C thread), else the asyncio client of
``bench/loadgen.py``; either runs as its own process and its CPU time is reported next to the
servers' (from /proc), so a reader can see whether the load generator was the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import common
from bench.common import (
    ADMIN_TOKEN,
    REPO_ROOT,
    Broker,
    CpuMeter,
    admin_url,
    base_url,
    broker_for_bench,
    fresh_topics,
    jit_cpu_s,
    markdown_table,
    run_facts,
    say,
    ticketing_process,
    write_section,
)
from bench.loadgen import LoadResult, RequestSpec, run_load, wrk_available
from bench.stack import dev_stack
from waitroom_devtools import devstack
from waitroom_devtools.procs import ServiceProcess, free_port
from waitroom_platform.logging import configure_logging

SECTION = "Ticketing HTTP"
SYSTEM_SUFFIX = ", whole system"  # the section of ``--system dev``
JOIN_ROOM = "bench-joins"
HEARTBEAT_ROOM = "bench-heartbeats"
ROOM_TIMEOUT_S = 3600.0


@dataclass
class Row:
    shape: str
    target: str
    result: LoadResult
    server_cores: float | None
    broker_cores: float | None
    machine_cores: float | None
    #: with ``--system dev``: each other service of the stack (moto, reaper, notifier, stats)
    others: dict[str, float | None] = field(default_factory=dict)
    #: the broker's JIT compiler threads (part of ``broker_cores``; see ``warm_broker``)
    broker_jit_cores: float | None = None

    @property
    def others_cores(self) -> float | None:
        """The other services together (None without them, or when one could not be read)."""
        if not self.others or None in self.others.values():
            return None
        return sum(c for c in self.others.values() if c is not None)


# ---------------------------------------------------------------------------------------------
# setting up


def start_servers(
    broker: Broker, work_dir: Path, partitions: int, telemetry: bool, workers: int = 1
) -> tuple[ServiceProcess, ServiceProcess]:
    topics = fresh_topics(broker.bootstrap, partitions)
    say(f"topics under {topics.commands.name.removesuffix('.commands')}; starting ticketing and the baseline ...")
    ticketing = ticketing_process(
        broker.bootstrap, topics, work_dir, telemetry=telemetry, WAITROOM_TICKETING_WORKERS=str(workers)
    ).start()
    baseline = start_baseline(work_dir, workers)
    ticketing.wait_ready(120)
    return ticketing, baseline


def start_baseline(work_dir: Path, workers: int) -> ServiceProcess:
    """``bench/baseline_app.py`` on a free port, served as ticketing is; ready when this returns."""
    port = free_port()
    baseline = ServiceProcess(
        "baseline",
        "bench.baseline_app",
        {"PYTHONPATH": str(REPO_ROOT)},
        work_dir / "baseline.log",
        ready_url=f"http://127.0.0.1:{port}/readyz",
        args=("--port", str(port), "--workers", str(workers)),
    ).start()
    baseline.wait_ready(60)
    return baseline


def create_room(base: str, admin: str, room_id: str, capacity: int, token: str = ADMIN_TOKEN, **config: object) -> None:
    """Create the room on the admin listener ``admin``; wait until the public one ``base`` shows it."""
    with httpx.Client(timeout=30) as http:
        common.create_room(http, admin, base, room_id, {"capacity": capacity, **config}, token)


async def _join_many(base: str, room_id: str, count: int, concurrency: int) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:

        async def join() -> dict[str, Any]:
            async with semaphore:
                response = await http.post(f"{base}/v1/rooms/{room_id}/tickets")
            if response.status_code not in (201, 202):
                raise RuntimeError(f"preparing tickets: {response.status_code} {response.text}")
            body: dict[str, Any] = response.json()
            return body

        tickets = await asyncio.gather(*(join() for _ in range(count)))
        deadline = time.monotonic() + 60
        while (await http.get(f"{base}/v1/rooms/{room_id}")).json()["last_queue_no"] < count:
            if time.monotonic() > deadline:
                raise TimeoutError("the prepared tickets were not all issued within 60 s")
            await asyncio.sleep(0.1)
    return tickets


@dataclass
class Prepared:
    waiting: list[dict[str, Any]]
    admitted: list[dict[str, Any]]

    def heartbeats(self, tickets: list[dict[str, Any]]) -> list[RequestSpec]:
        return [
            RequestSpec("POST", f"/v1/rooms/{HEARTBEAT_ROOM}/tickets/{t['ticket_id']}/heartbeat", bearer(t))
            for t in tickets
        ]

    def statuses(self) -> list[RequestSpec]:
        return [
            RequestSpec("GET", f"/v1/rooms/{HEARTBEAT_ROOM}/tickets/{t['ticket_id']}", bearer(t)) for t in self.waiting
        ]


def bearer(ticket: dict[str, Any]) -> str:
    return f"Bearer {ticket['ticket_token']}"


def prepare_tickets(base: str, admin: str, count: int, capacity: int, token: str = ADMIN_TOKEN) -> Prepared:
    """``count`` issued tickets in their own room: the first ``capacity`` admitted, the rest waiting."""
    # The reaper of ``--system dev`` expires a ticket silent for its room's heartbeat timeout: the
    # prepared tickets wait through the rows before theirs, so their room allows an hour (and so
    # does the join room: its tens of thousands of silent tickets would otherwise expire, and
    # admit the next, during the rows after it, which would then measure that wave too).
    create_room(base, admin, HEARTBEAT_ROOM, capacity, token, heartbeat_timeout_s=ROOM_TIMEOUT_S)
    say(f"joining {count} tickets for the heartbeat and status runs ...")
    tickets = asyncio.run(_join_many(base, HEARTBEAT_ROOM, count, concurrency=32))
    return Prepared(
        waiting=[t for t in tickets if t.get("state") == "waiting"],
        admitted=[t for t in tickets if t.get("state") == "admitted"],
    )


# ---------------------------------------------------------------------------------------------
# measuring


def start_profile(folder: Path | None, name: str, pid: int | None) -> subprocess.Popen[bytes] | None:
    """py-spy (``pip install py-spy``) recording ``pid`` into ``folder/<name>.json`` (speedscope)."""
    if folder is None or pid is None or shutil.which("py-spy") is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    argv = ["py-spy", "record", "-p", str(pid), "-o", str(folder / f"{name}.json"), "-f", "speedscope", "-r", "100"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603


def stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)


def start_broker_profile(folder: Path | None, name: str, pid: int | None) -> Path | None:
    """A JDK Flight Recorder recording of the broker (``jcmd``, in the JDK) into ``folder/<name>.jfr``;
    read it with ``jfr print --events jdk.ExecutionSample`` or ``jfr view hot-methods``."""
    if folder is None or pid is None or shutil.which("jcmd") is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    out = (folder / f"{name}.jfr").resolve()
    argv = ["jcmd", str(pid), "JFR.start", f"name={name}", "settings=profile", f"filename={out}"]
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)  # noqa: S603
    return out


def stop_broker_profile(pid: int | None, recording: Path | None) -> None:
    if pid is not None and recording is not None:
        argv = ["jcmd", str(pid), "JFR.stop", f"name={recording.stem}"]
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)  # noqa: S603


#: the broker's warm-up (``warm_broker``): join load in rounds of this many seconds, until its JIT
#: compiler threads use less than this many cores
WARM_ROUND_S = 5.0
WARM_QUIET_CORES = 0.05
#: ... in this many rounds in a row: C2 compiles in bursts, and one quiet round after 25 s was
#: followed by 0.18-0.22 of a core of compiling in the join row (tenth session)
WARM_QUIET_ROUNDS = 3


@dataclass
class WarmUp:
    seconds: float
    jit_cores: float | None  # in the last round
    joins: int


def warm_broker(
    args: argparse.Namespace, client: str, spec: list[RequestSpec], ticketing: ServiceProcess, broker: Broker
) -> WarmUp | None:
    """Join load, unmeasured, until the broker's JIT has compiled its hot code (at most
    ``--broker-warmup`` seconds). A JVM started for the run compiles for a minute or two under
    load, at 0.1-0.4 of a core on this machine: without this the first rows would bill that to
    the requests they measure (docs/benchmarks.md, "Surge capacity")."""
    if broker.pid is None or args.broker_warmup <= 0:
        return None
    say(
        f"warming the broker up (joins until its JIT threads use under {WARM_QUIET_CORES} of a core"
        f" in {WARM_QUIET_ROUNDS} rounds in a row) ..."
    )
    started, joins, jit, quiet = time.monotonic(), 0, None, 0
    while time.monotonic() - started < args.broker_warmup:
        before, at = jit_cpu_s(broker.pid), time.monotonic()
        result = run_load(
            client, base_url(ticketing), spec, connections=args.connections, duration_s=WARM_ROUND_S, max_requests=0
        )
        after = jit_cpu_s(broker.pid)
        joins += result.requests
        if before is None or after is None:
            break
        jit = (after - before) / max(time.monotonic() - at, 1e-9)
        say(f"  {time.monotonic() - started:5.0f} s: {result.throughput:.0f} joins/s, Kafka's JIT {jit:.2f} cores")
        quiet = quiet + 1 if jit < WARM_QUIET_CORES else 0
        if quiet >= WARM_QUIET_ROUNDS:
            break
    return WarmUp(round(time.monotonic() - started), jit, joins)


def measure(
    args: argparse.Namespace,
    client: str,
    shape: str,
    specs: list[RequestSpec],
    targets: dict[str, ServiceProcess],
    broker: Broker,
    rate: float | None = None,
    others: dict[str, int] | None = None,
) -> list[Row]:
    """One row per target; with ``rate``, open-loop at that many requests per second (latency rows).

    ``others``: the stack's other processes (``--system dev``), whose CPU is measured with the
    waitroom rows.
    """
    rows = []
    for target, proc in targets.items():
        url = base_url(proc)
        if args.warmup > 0:
            run_load(
                client, url, specs, connections=args.connections, duration_s=args.warmup, max_requests=0, rate=rate
            )
        extra = {f"other {name}": pid for name, pid in (others or {}).items()} if target == "waitroom" else {}
        meter = CpuMeter({"server": proc.pid, "broker": broker.pid, **extra})
        stem = f"{re.sub(r'[^A-Za-z0-9.]+', '-', shape).strip('-')}-{target}"
        spies = [start_profile(args.profile, stem, proc.pid)]
        for name, pid in extra.items():
            spies.append(start_profile(args.profile, f"{stem}-{name.removeprefix('other ')}", pid))
        recording = start_broker_profile(args.profile, f"{stem}-kafka", broker.pid)
        jit_before, jit_started = (jit_cpu_s(broker.pid) if broker.pid else None), time.monotonic()
        meter.start()
        result = run_load(
            client,
            url,
            specs,
            connections=args.connections,
            duration_s=args.duration,
            max_requests=args.max_requests,
            threads=args.threads,
            rate=rate,
        )
        cores = meter.stop()
        jit_after = jit_cpu_s(broker.pid) if broker.pid else None
        jit = None
        if jit_before is not None and jit_after is not None:
            jit = (jit_after - jit_before) / max(time.monotonic() - jit_started, 1e-9)
        for spy in spies:
            stop_profile(spy)
        stop_broker_profile(broker.pid, recording)
        say(
            f"  {shape:9} {target:9} {result.throughput:8.0f} req/s  p99 {result.p99_ms:7.1f} ms  "
            f"errors {result.errors}"
        )
        other = {name.removeprefix("other "): cores.get(name) for name in extra}
        rows.append(
            Row(shape, target, result, cores.get("server"), cores.get("broker"), cores.get("machine"), other, jit)
        )
    return rows


def _f(value: float | None, digits: int = 2) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _statuses(result: LoadResult) -> str:
    return ", ".join(f"{status}×{n}" for status, n in sorted(result.statuses.items()))


def _cpu_ms_per_request(row: Row) -> float | None:
    if row.server_cores is None or row.result.throughput <= 0:
        return None
    return row.server_cores / row.result.throughput * 1000


def results_table(rows: list[Row]) -> str:
    headers = [
        "shape",
        "server",
        "requests",
        "errors",
        "answers",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "client CPU (cores)",
        "server CPU (cores)",
        "server CPU ms/request",
        "Kafka CPU (cores)",
        "of which Kafka's JIT (cores)",
        "other services CPU (cores)",
        "whole machine busy (cores)",
    ]
    body = [
        [
            r.shape,
            r.target,
            r.result.requests,
            r.result.errors,
            _statuses(r.result),
            f"{r.result.throughput:.0f}",
            _f(r.result.p50_ms, 1),
            _f(r.result.p90_ms, 1),
            _f(r.result.p99_ms, 1),
            _f(r.result.max_ms, 1),
            _f(r.result.cores),
            _f(r.server_cores),
            _f(_cpu_ms_per_request(r)),
            _f(r.broker_cores),
            _f(r.broker_jit_cores),
            _f(r.others_cores),
            _f(r.machine_cores),
        ]
        for r in rows
    ]
    return markdown_table(headers, body)


def others_table(rows: list[Row]) -> str | None:
    """CPU of each other service during the waitroom rows (``--system dev``), in cores and per request."""
    ours = [r for r in rows if r.others]
    if not ours:
        return None
    names = list(ours[0].others)
    body = []
    for r in ours:
        cells: list[object] = [r.shape]
        for name in names:
            cores = r.others.get(name)
            per = None if cores is None or r.result.throughput <= 0 else cores / r.result.throughput * 1000
            cells.append(None if cores is None else f"{cores:.2f} ({per:.2f} ms)")
        body.append(cells)
    return markdown_table(["shape (waitroom rows)", *(f"{n}: cores (ms/request)" for n in names)], body)


def ratios(rows: list[Row]) -> dict[str, dict[str, float]]:
    by = {(r.shape, r.target): r.result for r in rows}
    out = {}
    for shape in dict.fromkeys(r.shape for r in rows):
        w, b = by[(shape, "waitroom")], by[(shape, "baseline")]
        out[shape] = {
            "throughput": w.throughput / b.throughput if b.throughput else float("nan"),
            "p50": w.p50_ms / b.p50_ms if b.p50_ms else float("nan"),
            "p99": w.p99_ms / b.p99_ms if b.p99_ms else float("nan"),
        }
    return out


def ratio_table(rows: list[Row]) -> str:
    body = [
        [shape, f"{r['throughput']:.2f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}"] for shape, r in ratios(rows).items()
    ]
    headers = ["shape", "throughput waitroom/baseline", "p50 waitroom/baseline", "p99 waitroom/baseline"]
    return markdown_table(headers, body)


def reading(rows: list[Row], cpus: int) -> list[str]:
    """What the figures say, derived from them so a re-run keeps the text true."""
    lines = []
    for shape, r in ratios(rows).items():
        lines.append(
            f"- {shape}: ticketing serves {r['throughput'] * 100:.0f} % of the bare endpoint's throughput "
            f"with {r['p50']:.1f}× its median latency."
        )
    by = {(r.shape, r.target): r for r in rows}
    for shape in dict.fromkeys(r.shape for r in rows):
        w, b = by[(shape, "waitroom")], by[(shape, "baseline")]
        w_ms, b_ms = _cpu_ms_per_request(w), _cpu_ms_per_request(b)
        if w_ms is not None and b_ms:
            lines.append(
                f"- {shape}: ticketing spent {w_ms:.2f} ms of CPU per request against {b_ms:.2f} ms for the bare "
                f"endpoint ({w_ms / b_ms:.1f}×); CPU per request depends less on what else the machine runs "
                "than throughput does."
            )
    for row in rows:
        if row.result.cores > 0.8:
            lines.append(
                f"- {row.shape} → {row.target}: the load generator used {row.result.cores:.2f} cores: "
                "it may have been the bottleneck of that row."
            )
    saturated = [r for r in rows if r.machine_cores is not None and r.machine_cores > cpus * 0.9]
    if saturated:
        ours = [sum(c for c in (r.result.cores, r.server_cores, r.broker_cores) if c is not None) for r in saturated]
        which = "every row" if len(saturated) == len(rows) else ", ".join(f"{r.shape} → {r.target}" for r in saturated)
        lines.append(
            f"- The machine was saturated during {which} (over 90 % of its {cpus} CPUs busy; client, server and "
            f"Kafka used {min(ours):.2f}–{max(ours):.2f} cores of it, other work the rest): throughputs are lower "
            "bounds, and the ratios hold only because both servers ran under the same load."
        )
    join, bare = by.get(("join", "waitroom")), by.get(("join", "baseline"))
    if join and bare and join.server_cores and join.broker_cores is not None and bare.server_cores:
        ours = (join.server_cores + join.broker_cores + (join.others_cores or 0)) / join.result.throughput * 1000
        theirs = bare.server_cores / bare.result.throughput * 1000
        who = (
            "ticketing with its sequencer, Kafka and the other services"
            if join.others_cores is not None
            else "ticketing with its sequencer, and Kafka"
        )
        lines.append(
            f"- join, all processes together ({who}): {ours:.2f} ms of CPU per "
            f"join against the bare endpoint's {theirs:.2f} ms ({ours / theirs:.1f}×; the target is at most 3×)."
        )
    for shape, row in by.items():
        if shape[0].startswith("join at") and shape[1] == "waitroom":
            lines.append(
                f"- {shape[0]}: open-loop, latency from each request's due time: p50 {row.result.p50_ms:.1f} ms, "
                f"p99 {row.result.p99_ms:.1f} ms (the targets: p50 at most 10 ms, p99 at most 30 ms)."
            )
    joins = [r for r in rows if r.shape == "join" and r.target == "waitroom"]
    for row in joins:
        pending = row.result.statuses.get(202, 0)
        if pending:
            lines.append(
                f"- {pending} joins answered 202 (pending): the sequencer had not issued the ticket within "
                "the API's join wait (WAITROOM_TICKETING_JOIN_WAIT_S, 2 s)."
            )
    return lines


def _warm_line(warm: WarmUp | None, args: argparse.Namespace) -> str:
    if warm is None:
        return "- Kafka not warmed up first (a broker the bench did not start, or --broker-warmup 0)"
    jit = "" if warm.jit_cores is None else f", {warm.jit_cores:.2f} of a core in the last {WARM_ROUND_S:g} s"
    return (
        f"- Kafka warmed up before the rows: {warm.joins} joins in {warm.seconds:g} s (unmeasured), until its JIT "
        f"compiler threads used under {WARM_QUIET_CORES} of a core in {WARM_QUIET_ROUNDS} rounds of {WARM_ROUND_S:g} s "
        f"in a row or {args.broker_warmup:g} s had passed{jit}"
    )


def report(
    args: argparse.Namespace,
    client: str,
    client_note: str,
    broker: Broker,
    rows: list[Row],
    n: int,
    warm: WarmUp | None = None,
) -> str:
    cpus = len(os.sched_getaffinity(0))
    admitted = min(args.capacity, n)
    parts = [
        run_facts(broker),
        f"- load generator: {client_note}; {args.connections} connections, {args.threads} thread(s), "
        f"{args.duration:g} s per row after a {args.warmup:g} s warm-up, at most {args.max_requests} requests per row",
        (
            "- the system: all of it as `make dev` starts it (`bench/stack.py`, the services of "
            "`waitroom_devtools.devstack`, each its own process: ticketing with API and sequencer in one, "
            f"moto, reaper, notifier, stats), development settings, {args.partitions} partitions per room topic, "
            "only ticketing's join rate limit per client address off; the other services' CPU is the column "
            "'other services'"
            if args.system == "dev"
            else f"- ticketing: one process (API + sequencer), {args.partitions} partitions per room topic, join "
            "rate limit off, transactions on, INFO logs, "
            + (
                "telemetry per this environment's OTEL_* settings"
                if args.telemetry
                else "telemetry off (OTEL_SDK_DISABLED)"
            )
            + ", no other service running"
        )
        + "; baseline: `bench/baseline_app.py`, the same uvicorn options "
        "(one process, access log off, log level warning, `Server.serve()` on uvloop, as ticketing)",
        f"- join: `POST /v1/rooms/{JOIN_ROOM}/tickets`, a room of capacity {args.capacity}, so all but the first "
        f"{args.capacity} joins wait (its heartbeat timeout, like the heartbeat room's, {ROOM_TIMEOUT_S:g} s: no "
        "ticket expires during the run); a 201 means the sequencer issued the ticket and the API's read model saw it "
        "(the full path through Kafka); the baseline answers a ticket-sized JSON at once",
        f"- heartbeat waiting / admitted: `POST /v1/rooms/{HEARTBEAT_ROOM}/tickets/<id>/heartbeat` cycling over "
        f"the {n - admitted} waiting, or the {admitted} admitted, of {n} issued tickets (a room with a heartbeat "
        f"timeout of {ROOM_TIMEOUT_S:g} s, so none expires before its row), each with its own token "
        "(an admitted ticket's answer carries its entry token, re-signed once past half its lifetime); "
        "status: `GET` of the waiting tickets; the baseline answers the same body without checks",
        "- CPU columns: cores = CPU seconds / wall seconds of the row; client from wait4, server and Kafka from "
        "/proc/<pid>/stat, Kafka's JIT from its compiler threads in /proc/<pid>/task (part of Kafka's CPU), whole "
        "machine from /proc/stat (everyone's work, ours included)",
        _warm_line(warm, args),
        "",
        results_table(rows),
        "",
        *(
            ["The other services' CPU during the waitroom rows (what a 'whole system' row adds):", "", table, ""]
            if (table := others_table(rows))
            else []
        ),
        "Ratios (the figure to compare across runs and machines):",
        "",
        ratio_table(rows),
        "",
        *reading(rows, cpus),
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.http_joins", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per measured row (default 20)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="upper bound per row (default 1e6)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each row (default 2)")
    parser.add_argument(
        "--broker-warmup",
        type=float,
        default=120.0,
        help="at most this many seconds of unmeasured joins first, until the broker's JIT is done (0: none)",
    )
    parser.add_argument("--tickets", type=int, default=2000, help="tickets the heartbeat rows cycle over")
    parser.add_argument("--capacity", type=int, default=100, help="capacity of the benchmark rooms")
    parser.add_argument("--partitions", type=int, default=12, help="partitions of each room topic (default 12)")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--shapes",
        default="join,heartbeat waiting,heartbeat admitted,status",
        help="comma-separated request shapes (default: all four)",
    )
    parser.add_argument(
        "--latency-at",
        type=float,
        default=0.1,
        help="after the join row, joins open-loop at this fraction of its rate, for latency (0: skip; default 0.1)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="profiles per row into this folder: py-spy of ticketing (and of the other services with"
        " --system dev), JFR of Kafka",
    )
    parser.add_argument("--workers", type=int, default=1, help="API processes (WAITROOM_TICKETING_WORKERS)")
    parser.add_argument(
        "--system",
        choices=["ticketing", "dev"],
        default="ticketing",
        help="ticketing: the ticketing process alone on the broker (default); dev: the whole system as "
        "`make dev` starts it (moto, reaper, notifier, stats too), their CPU measured with ticketing's",
    )
    parser.add_argument(
        "--telemetry",
        action="store_true",
        help="run ticketing with this environment's OTEL_* settings (default: telemetry off, like the baseline)",
    )
    parser.add_argument(
        "--write-docs", action="store_true", help=f"write the '## {SECTION}' section of docs/benchmarks.md"
    )
    return parser.parse_args(argv)


def choose_client(wanted: str) -> tuple[str, str]:
    if wanted == "python":
        return "python", "the asyncio client of bench/loadgen.py (asked for)"
    if wrk_available():
        return "wrk", "wrk (one C thread, Lua script generated by bench/loadgen.py)"
    if wanted == "wrk":
        raise SystemExit("wrk is not installed (apt-get install wrk), and --client wrk was asked for")
    note = "the asyncio client of bench/loadgen.py, because wrk is not installed (apt-get install wrk)"
    say(f"NOTE: using {note}; its own CPU cost is higher, see the client CPU column")
    return "python", note


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("WARNING", "console", service="bench")  # library logs to stderr; stdout is the report
    client, client_note = choose_client(args.client)
    section = SECTION + (SYSTEM_SUFFIX if args.system == "dev" else "")
    with contextlib.ExitStack() as exits:
        tmp = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="waitroom-bench-")))
        others: dict[str, int] = {}
        token = ADMIN_TOKEN
        if args.system == "dev":
            if args.workers != 1 or args.telemetry:
                raise SystemExit("--system dev runs the stack as make dev does: no --workers or --telemetry")
            stack = exits.enter_context(dev_stack(tmp, args.partitions))
            broker, ticketing, ticketing_admin = stack.broker, stack.ticketing, stack.admin
            others, token = stack.other_pids(), devstack.DEV_ADMIN_TOKEN
            baseline = start_baseline(tmp, args.workers)
        else:
            broker = exits.enter_context(broker_for_bench(tmp))
            ticketing, baseline = start_servers(broker, tmp, args.partitions, args.telemetry, args.workers)
            ticketing_admin = admin_url(ticketing)
        try:
            ticketing_url = base_url(ticketing)
            create_room(
                ticketing_url, ticketing_admin, JOIN_ROOM, args.capacity, token, heartbeat_timeout_s=ROOM_TIMEOUT_S
            )
            prepared = prepare_tickets(ticketing_url, ticketing_admin, args.tickets, args.capacity, token)
            targets = {"baseline": baseline, "waitroom": ticketing}
            say(f"measuring with {client}: {args.connections} connections, {args.duration:g} s per row ...")
            shapes = {
                "join": [RequestSpec("POST", f"/v1/rooms/{JOIN_ROOM}/tickets")],
                "heartbeat waiting": prepared.heartbeats(prepared.waiting),
                "heartbeat admitted": prepared.heartbeats(prepared.admitted),
                "status": prepared.statuses(),
            }
            warm = warm_broker(args, client, shapes["join"], ticketing, broker)
            rows = []
            for shape in args.shapes.split(","):
                rows += measure(args, client, shape, shapes[shape], targets, broker, others=others)
            joins = [row for row in rows if row.shape == "join" and row.target == "waitroom"]
            if joins and args.latency_at > 0:
                # the latency target: joins at a tenth of the rate ticketing just reached
                rate = round(max(1.0, joins[0].result.throughput * args.latency_at), 1)
                shape = f"join at {args.latency_at:.0%} ({rate:g}/s)"
                say(f"open-loop joins at {rate:g}/s ...")
                rows += measure(args, client, shape, shapes["join"], targets, broker, rate=rate, others=others)
        except BaseException:
            say(f"ticketing log tail:\n{ticketing.log_tail()}")
            raise
        finally:
            if args.system != "dev":  # the dev stack stops its own services
                ticketing.stop()
            baseline.stop()
        text = report(args, client, client_note, broker, rows, len(prepared.waiting) + len(prepared.admitted), warm)
    sys.stdout.write(text + "\n")
    if args.write_docs:
        write_section(section, text)
        say(f"wrote the '## {section}' section of docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
