"""The load generator: ``wrk`` with a generated Lua script, or a small asyncio client when wrk is missing.

Both run as a separate process and report the same figures (requests, latency percentiles, statuses,
errors); the parent takes the process's own CPU time from ``wait4``, so a reader can tell whether the
load generator, rather than the server, was the bottleneck.

Run as ``python -m bench.loadgen`` it is the fallback client (the parent starts it; not meant by hand).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

RESULT_MARK = "LOADGEN_RESULT "
REQUEST_TIMEOUT_S = 10


@dataclass(frozen=True)
class RequestSpec:
    method: str
    path: str
    authorization: str = ""


@dataclass
class LoadResult:
    client: str
    requests: int
    duration_s: float
    statuses: dict[int, int]
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def errors(self) -> int:
        """Socket errors and timeouts plus every answer that is not 2xx."""
        return self.socket_errors + sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    @property
    def cores(self) -> float:
        return self.cpu_s / self.duration_s if self.duration_s > 0 else 0.0

    @classmethod
    def from_report(cls, client: str, report: dict[str, Any], cpu_s: float) -> LoadResult:
        return cls(
            client=client,
            requests=int(report["requests"]),
            duration_s=report["duration_us"] / 1e6,
            statuses={int(k): int(v) for k, v in report["statuses"].items()},
            socket_errors=int(report["socket_errors"]),
            p50_ms=report["p50_us"] / 1000,
            p90_ms=report["p90_us"] / 1000,
            p99_ms=report["p99_us"] / 1000,
            max_ms=report["max_us"] / 1000,
            cpu_s=cpu_s,
        )


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_load(
    client: str,
    url: str,
    specs: list[RequestSpec],
    *,
    connections: int,
    duration_s: float,
    max_requests: int,
    threads: int = 1,
    rate: float | None = None,
) -> LoadResult:
    """Send ``specs`` round-robin to ``url`` from ``connections`` kept-alive connections.

    Stops after ``duration_s`` or ``max_requests`` answers, whichever comes first. With ``rate``
    (requests per second) the load is open-loop instead: the asyncio client sends one request every
    1/rate s whatever the answers do (wrk has no such mode), and a latency counts from the moment
    the request was due, so a slow answer that holds back the next ones shows in the figures.
    """
    if rate is not None:
        client = "python"
    with tempfile.TemporaryDirectory(prefix="waitroom-load-") as tmp:
        if client == "wrk":
            script = Path(tmp) / "requests.lua"
            script.write_text(wrk_script(specs, max_requests, threads))
            seconds = max(1, round(duration_s))  # wrk takes whole seconds
            argv = [
                "wrk",
                f"-t{min(threads, connections)}",
                f"-c{connections}",
                f"-d{seconds}s",
                f"--timeout={REQUEST_TIMEOUT_S}s",
                "-s",
                str(script),
                url,
            ]
        else:
            requests_file = Path(tmp) / "requests.json"
            requests_file.write_text(json.dumps([[s.method, s.path, s.authorization] for s in specs]))
            argv = [
                sys.executable,
                "-m",
                "bench.loadgen",
                "--url",
                url,
                "--requests",
                str(requests_file),
                "--connections",
                str(connections),
                "--duration",
                str(duration_s),
                "--max-requests",
                str(max_requests),
                *(["--rate", str(rate)] if rate is not None else []),
            ]
        report, cpu_s, output = _run_measured(argv, timeout_s=duration_s + 60)
    if report is None:
        raise RuntimeError(f"{argv[0]} gave no result:\n{output[-3000:]}")
    return LoadResult.from_report(client, report, cpu_s)


def _run_measured(argv: list[str], timeout_s: float) -> tuple[dict[str, Any] | None, float, str]:
    """Run ``argv`` to its end; its result line, its own CPU seconds (from wait4) and its output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_repo_root()), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid != 0:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        out.seek(0)
        output = out.read().decode(errors="replace")
    report = None
    for line in output.splitlines():
        if line.startswith(RESULT_MARK):
            report = json.loads(line.removeprefix(RESULT_MARK))
    return report, usage.ru_utime + usage.ru_stime, output


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# wrk


def _lua_string(text: str) -> str:
    if any(c in text for c in '"\\\n\r'):
        raise ValueError(f"not a plain request field: {text!r}")
    return f'"{text}"'


def wrk_script(specs: list[RequestSpec], max_requests: int, threads: int) -> str:
    """A wrk script that cycles through ``specs`` and prints one JSON result line in ``done``."""
    items = ",\n".join(
        f"  {{{_lua_string(s.method)}, {_lua_string(s.path)}, {_lua_string(s.authorization)}}}" for s in specs
    )
    per_thread = 0 if max_requests <= 0 else -(-max_requests // max(1, threads))
    return (
        _WRK_TEMPLATE.replace("__ITEMS__", items)
        .replace("__MAX_PER_THREAD__", str(per_thread))
        .replace("__MARK__", RESULT_MARK)
    )


_WRK_TEMPLATE = """-- generated by bench/loadgen.py
local items = {
__ITEMS__
}
local max_per_thread = __MAX_PER_THREAD__
local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local prepared = {}
local index = 0
local answered = 0
statuses = {}
-- wrk reports its full -d duration even when every thread stopped early at the request bound, so
-- each thread notes when it stopped (monotonic microseconds since its start; 0: it did not stop).
stopped_after_us = 0
local clock_ok, ffi = pcall(require, "ffi")
if clock_ok then
  clock_ok = pcall(ffi.cdef, [[
    typedef struct { long sec; long nsec; } wr_timespec;
    int clock_gettime(int, wr_timespec *);
  ]])
end
local function now_us()
  if not clock_ok then return 0 end
  local ts = ffi.new("wr_timespec")
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.sec) * 1000000 + tonumber(ts.nsec) / 1000
end
local started_us = 0

function init(args)
  for i, item in ipairs(items) do
    local headers = nil
    if item[3] ~= "" then headers = {["Authorization"] = item[3]} end
    prepared[i] = wrk.format(item[1], item[2], headers)
  end
  -- threads start at different requests, so no two send the same one at the same time
  index = (tid * 7919) % #prepared
  started_us = now_us()
end

function request()
  index = index % #prepared + 1
  return prepared[index]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  answered = answered + 1
  if max_per_thread > 0 and answered == max_per_thread then
    if started_us > 0 then stopped_after_us = math.max(1, now_us() - started_us) end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local merged = {}
  local all_stopped, stopped_max = true, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do merged[status] = (merged[status] or 0) + n end
    local stopped = thread:get("stopped_after_us")
    if stopped == 0 then all_stopped = false else stopped_max = math.max(stopped_max, stopped) end
  end
  local duration = summary.duration
  if all_stopped then duration = stopped_max end
  local parts = {}
  for status, n in pairs(merged) do table.insert(parts, string.format('"%d": %d', status, n)) end
  local e = summary.errors
  io.write(string.format(
    '__MARK__{"requests": %d, "duration_us": %d, "socket_errors": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "max_us": %d, "statuses": {%s}}\\n',
    summary.requests, duration, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    table.concat(parts, ", ")))
end
"""


# ---------------------------------------------------------------------------------------------
# the fallback client: HTTP/1.1 with keep-alive over asyncio streams, nothing more


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, raw: bytes) -> int:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        assert self._reader is not None
        self._writer.write(raw)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if length:
            await self._reader.readexactly(length)
        if close:
            await self.close()
        return status

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


async def _fallback(
    url: str, specs: list[list[str]], connections: int, duration_s: float, max_requests: int, rate: float | None = None
) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    raw = []
    for method, path, authorization in specs:
        auth = f"Authorization: {authorization}\r\n" if authorization else ""
        raw.append(f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}Content-Length: 0\r\n\r\n".encode())
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    socket_errors = 0
    next_index = 0
    started = time.monotonic()
    deadline = started + duration_s

    async def timed(connection: _Connection, request: bytes, since: float) -> None:
        """Send one request; its latency counts from ``since`` (when sent, or when it was due)."""
        nonlocal socket_errors
        try:
            status = await asyncio.wait_for(connection.send(request), REQUEST_TIMEOUT_S)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            socket_errors += 1
            await connection.close()
            return
        latencies.append(time.monotonic() - since)
        statuses[status] += 1

    async def worker(offset: int) -> None:
        nonlocal next_index
        connection = _Connection(host, port)
        try:
            while time.monotonic() < deadline and (max_requests <= 0 or len(latencies) < max_requests):
                request = raw[(next_index + offset) % len(raw)]
                next_index += 1
                await timed(connection, request, time.monotonic())
        finally:
            await connection.close()

    async def paced(offset: int, slots: asyncio.Queue[float]) -> None:
        """Open loop: take the next due time, send then (or at once when late), time from the due time."""
        connection = _Connection(host, port)
        try:
            while True:
                due = await slots.get()
                if due < 0:
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await timed(connection, raw[(offset + int(due * 1000)) % len(raw)], due)
        finally:
            await connection.close()

    if rate is None:
        await asyncio.gather(*(worker(i * 7919) for i in range(connections)))
    else:
        slots: asyncio.Queue[float] = asyncio.Queue()
        count = int(duration_s * rate) if max_requests <= 0 else min(max_requests, int(duration_s * rate))
        for i in range(count):
            slots.put_nowait(started + i / rate)
        for _ in range(connections):
            slots.put_nowait(-1.0)
        await asyncio.gather(*(paced(i * 7919, slots) for i in range(connections)))
    elapsed = time.monotonic() - started
    ordered = sorted(latencies) or [0.0]

    def percentile(p: float) -> int:
        return int(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1e6)

    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "socket_errors": socket_errors,
        "p50_us": percentile(50),
        "p90_us": percentile(90),
        "p99_us": percentile(99),
        "max_us": int(ordered[-1] * 1e6),
        "statuses": {str(k): v for k, v in statuses.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description="the fallback load client")
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=Path, required=True, help="JSON list of [method, path, authorization]")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=0)
    parser.add_argument("--rate", type=float, default=None, help="open loop: requests per second")
    args = parser.parse_args(argv)
    specs = json.loads(args.requests.read_text())
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    report = runner(_fallback(args.url, specs, args.connections, args.duration, args.max_requests, args.rate))
    sys.stdout.write(RESULT_MARK + json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
