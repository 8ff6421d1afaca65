"""Run waitroom services as child processes: the dev command, the tests and the benchmarks share this.

A child dies with its parent (PR_SET_PDEATHSIG on Linux), so neither Ctrl-C nor a ``kill -9`` of
the dev command or a test run leaves services behind. The JVM launchers (Kafka, Zipkin) use the
same guard, and the helpers here to signal a child's process group and quote the end of its log.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

PR_SET_PDEATHSIG = 1
LOOPBACK = "127.0.0.1"


def die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGKILL when its parent dies (Linux only).

    ``prctl(PR_SET_PDEATHSIG)`` is the only guard that holds when the parent is killed with
    SIGKILL: no Python code runs then. The signal follows the parent *thread*, so start children
    from the thread that lives as long as they should. Checking the parent id afterwards closes the
    race where the parent died between ``fork`` and ``prctl``. Elsewhere there is no such call;
    atexit and signal handling still apply.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def signal_group(pgid: int, signum: signal.Signals) -> None:
    """Send ``signum`` to the process group ``pgid`` (a child started with ``start_new_session``);
    a group that is already gone, or not ours to signal, is left alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def tail_lines(text: str, lines: int) -> str:
    """The last ``lines`` lines of ``text`` (trailing blank lines dropped), for error messages."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def free_ports(count: int) -> list[int]:
    """Distinct ports the kernel reports free on loopback (all held open until all are chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port() -> int:
    return free_ports(1)[0]


class ServiceProcess:
    """One service, ``python -m <module>``, with its environment and log file."""

    def __init__(
        self,
        name: str,
        module: str,
        env: Mapping[str, str],
        log_path: Path,
        ready_url: str | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.module = module
        self.args = args
        self.env = dict(env)
        self.log_path = log_path
        self.ready_url = ready_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent(os.getpid()),  # noqa: PLW1509 - no threads are started before this
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until ``ready_url`` answers 200 (or, without one, until the process is up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.returncode()}:\n{self.log_tail()}")
            if self.ready_url is None:
                return
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as response:  # noqa: S310 - loopback URL
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not finish in ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return self.returncode()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.returncode()

    def kill(self) -> None:
        """``kill -9``: no chance to clean up, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
