"""What every benchmark needs: a broker, a ticketing process, CPU accounting, the results document."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx

from waitroom_devtools.broker import EmbeddedKafka
from waitroom_devtools.procs import ServiceProcess, free_ports
from waitroom_events.topics import TopicRegistry, topic_registry
from waitroom_platform.admin import ensure_topics, wait_for_broker

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = REPO_ROOT / "docs" / "benchmarks.md"
DOC_TITLE = "# Benchmarks"

ADMIN_TOKEN = "bench-admin-token-0123456789"
TICKET_SECRET = "bench-ticket-secret-0123456789abcdef"

_TICKS = os.sysconf("SC_CLK_TCK")


def say(text: str = "") -> None:
    """Progress on stderr, so stdout carries only the results."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------------------------
# the machine and CPU accounting


def machine_facts() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cpus": str(len(os.sched_getaffinity(0))),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_at_start": load,
    }


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a running process (all its threads) and of its live child
    processes (an API's extra workers), from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    total = (utime + stime) / _TICKS
    for child in _children(pid):
        total += process_cpu_s(child) or 0.0
    return total


#: the JVM's JIT compiler threads, by their (15-character) thread names
_JIT_THREAD = re.compile(r"^C\d CompilerThre")


def jit_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a JVM's JIT compiler threads (C1, C2), from /proc/<pid>/task.

    A JVM started for the run compiles its hot code during the first minute or two of load, on
    threads of its own: that work is the broker starting, not the broker serving."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.exists():
        return None
    total = 0
    for task in tasks.iterdir():
        with contextlib.suppress(OSError):
            if _JIT_THREAD.match((task / "comm").read_text()):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def rss_mb(pid: int) -> float | None:
    """The resident set of ``pid`` in MB (VmRSS of /proc/<pid>/status), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def create_room(
    http: httpx.Client,
    admin: str,
    api: str,
    room_id: str,
    config: dict[str, Any],
    token: str,
    accepted: Sequence[int] = (200, 201, 202),
) -> None:
    """Configure ``room_id`` on the admin listener ``admin``; wait until the public one ``api`` shows it."""
    response = http.put(f"{admin}/v1/admin/rooms/{room_id}", json=config, headers={"Authorization": f"Bearer {token}"})
    if response.status_code not in accepted:
        raise RuntimeError(f"creating room {room_id}: {response.status_code} {response.text}")
    deadline = time.monotonic() + 30
    while http.get(f"{api}/v1/rooms/{room_id}").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(f"room {room_id} never became visible")
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(x) for x in (task / "children").read_text().split()]
    return found


def machine_busy_s() -> float:
    """CPU seconds every CPU of the machine spent not idle since boot (all processes, ours or not)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICKS


class CpuMeter:
    """CPU used by a set of processes between ``start()`` and ``stop()``, in cores (CPU s / wall s)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = {name: pid for name, pid in pids.items() if pid is not None}
        self._before: dict[str, float | None] = {}
        self._machine_before = 0.0
        self._started = 0.0
        self.cores: dict[str, float | None] = {}

    def start(self) -> None:
        self._before = {name: process_cpu_s(pid) for name, pid in self._pids.items()}
        self._machine_before = machine_busy_s()
        self._started = time.monotonic()

    def stop(self) -> dict[str, float | None]:
        wall = max(time.monotonic() - self._started, 1e-9)
        for name, pid in self._pids.items():
            before, after = self._before.get(name), process_cpu_s(pid)
            self.cores[name] = None if before is None or after is None else (after - before) / wall
        self.cores["machine"] = (machine_busy_s() - self._machine_before) / wall
        return self.cores


# ---------------------------------------------------------------------------------------------
# the broker and the ticketing service


@dataclass
class Broker:
    bootstrap: str
    description: str
    pid: int | None  # the JVM's pid when we started it; None for a cluster we were pointed at


@contextlib.contextmanager
def broker_for_bench(work_dir: Path) -> Iterator[Broker]:
    """``KAFKA_BOOTSTRAP_SERVERS`` if set, else an embedded Kafka of our own in ``work_dir``."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        asyncio.run(wait_for_broker(external, timeout_s=30))
        yield Broker(external, f"existing cluster at {external} (KAFKA_BOOTSTRAP_SERVERS)", None)
        return
    say("starting an embedded Kafka ...")
    with EmbeddedKafka(work_dir / "kafka") as kafka:
        yield Broker(kafka.bootstrap_servers, "embedded Apache Kafka (single node, started by the bench)", kafka.pid)


def fresh_topics(bootstrap: str, partitions: int) -> TopicRegistry:
    """Every registry topic under a prefix of this run's own, so no earlier run's records are seen."""
    registry = topic_registry(prefix=f"bench{uuid4().hex[:8]}", room_partitions=partitions)
    asyncio.run(ensure_topics(bootstrap, registry.all()))
    return registry


def ticketing_process(
    bootstrap: str,
    topics: TopicRegistry,
    work_dir: Path,
    name: str = "ticketing",
    *,
    telemetry: bool = False,
    **extra: str,
) -> ServiceProcess:
    """A ticketing process (not started) configured the way the end-to-end tests run it.

    Telemetry is off unless asked for: the baseline has none, and with no ``OTEL_*`` settings the
    service would print every span to its log (the development default), which no deployment does.
    With ``telemetry`` the process gets this environment's ``OTEL_*`` settings as they are.
    """
    from waitroom_ticketing.tokens import write_private_key

    keys_dir = work_dir / "jwt-keys"
    if not keys_dir.exists():
        keys_dir.mkdir(parents=True)
        write_private_key(keys_dir / "bench.pem")
    port, admin_port = free_ports(2)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "WAITROOM_TOPIC_PREFIX": topics.commands.name.removesuffix(".commands"),
        "WAITROOM_ROOM_PARTITIONS": str(topics.commands.partitions),
        "WAITROOM_LOG_FORMAT": "json",
        "WAITROOM_LOG_LEVEL": "INFO",
        "WAITROOM_TICKETING_PORT": str(port),
        "WAITROOM_TICKETING_ADMIN_PORT": str(admin_port),
        "WAITROOM_TICKETING_HEALTH_PORT": "0",
        "WAITROOM_TICKETING_ADMIN_TOKEN": ADMIN_TOKEN,
        "WAITROOM_TICKETING_TICKET_SECRET": TICKET_SECRET,
        "WAITROOM_TICKETING_JWT_KEYS_DIR": str(keys_dir),
        "WAITROOM_TICKETING_JOIN_RATE_PER_IP": "0",  # one client address makes every request: no limit
        **({} if telemetry else {"OTEL_SDK_DISABLED": "true"}),
        **extra,
    }
    proc = ServiceProcess(name, "waitroom_ticketing", env, work_dir / f"{name}.log")
    proc.ready_url = f"http://127.0.0.1:{port}/readyz"
    return proc


def base_url(proc: ServiceProcess) -> str:
    """The public listener of a process made by :func:`ticketing_process`."""
    assert proc.ready_url is not None
    return proc.ready_url.removesuffix("/readyz")


def admin_url(proc: ServiceProcess) -> str:
    """The admin listener (``/v1/admin/...``) of a process made by :func:`ticketing_process`."""
    return f"http://127.0.0.1:{proc.env['WAITROOM_TICKETING_ADMIN_PORT']}"


def wait_for_log_event(proc: ServiceProcess, event: str, timeout_s: float) -> dict[str, Any]:
    """The first JSON log line of ``proc`` whose ``event`` is ``event``, polling its log file."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            for line in proc.log_path.read_text(errors="replace").splitlines():
                if f'"{event}"' not in line:
                    continue
                with contextlib.suppress(ValueError):
                    entry: dict[str, Any] = json.loads(line)
                    if entry.get("event") == event:
                        return entry
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.returncode()}:\n{proc.log_tail()}")
        time.sleep(0.1)
    raise TimeoutError(f"no {event!r} in {proc.log_path} after {timeout_s:.0f} s:\n{proc.log_tail()}")


# ---------------------------------------------------------------------------------------------
# the results document


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return "–" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """How this benchmark was started, as a reader would type it from the repository root."""
    module = sys.modules["__main__"].__spec__
    name = module.name if module is not None else sys.argv[0]
    return shlex.join(["python", "-m", name, *sys.argv[1:]])


def code_version() -> str:
    """The commit measured, and whether the working tree differed from it."""

    def git(*argv: str) -> str:
        result = subprocess.run(["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    return f"commit {commit}" + (f" with uncommitted changes in {len(changed)} files" if changed else "")


def run_facts(broker: Broker) -> str:
    facts = machine_facts()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"- command: `{command_line()}` (from the repository root)",
            f"- date: {now}",
            f"- machine: {facts['cpus']} CPUs ({facts['cpu_model']}), Linux {facts['kernel']}, "
            f"Python {facts['python']}; load average at start {facts['load_at_start']}",
            f"- code: {code_version()}",
            f"- broker: {broker.description}",
            "- other processes (other engineers' test runs) may have been running on the same machine: "
            "absolute figures are noisy; compare rows of the same run.",
        ]
    )


def write_section(title: str, body: str, path: Path = DOC_PATH) -> None:
    """Replace the ``## title`` section of the results document (up to the next ``## ``), or append it."""
    text = path.read_text() if path.exists() else DOC_TITLE + "\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
