"""The README's first command: the whole system on the embedded default, and a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from waitroom_devtools.procs import free_port


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (zombies count as gone)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _start(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    # The embedded default, whatever cluster the test session itself uses.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAITROOM_", "KAFKA_"))}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "waitroom_devtools.devstack",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--admin-port",
            str(free_port()),
            "--partitions",
            "3",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "WAITROOM READY" in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    raise AssertionError("the dev stack did not come up:\n" + log.read_text(errors="replace")[-3000:])


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    return proc.wait(90)


def test_the_dev_command_serves_a_demo_room_keeps_its_data_and_leaves_no_process_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev"
    port = free_port()
    log = tmp_path / "dev.log"
    first = _start(data_dir, port, log)
    try:
        _wait_ready(first, log)
        children = _children(first.pid)
        assert len(children) >= 2, "expected the broker and the services as child processes"
        joined = httpx.post(f"http://127.0.0.1:{port}/v1/rooms/demo/tickets", timeout=30)
        assert joined.status_code == 201, joined.text
        assert joined.json()["queue_no"] == 1
    finally:
        code = _stop(first)
    assert code == 0, log.read_text()[-3000:]
    assert [pid for pid in children if _alive(pid)] == []

    log2 = tmp_path / "dev2.log"
    second = _start(data_dir, port, log2)
    try:
        _wait_ready(second, log2)
        status = httpx.get(f"http://127.0.0.1:{port}/v1/rooms/demo", timeout=30).json()
        assert status["last_queue_no"] == 1, "the log of the first run was kept"
        rejoined = httpx.post(f"http://127.0.0.1:{port}/v1/rooms/demo/tickets", timeout=30).json()
        assert rejoined["queue_no"] == 2
    finally:
        assert _stop(second) == 0
