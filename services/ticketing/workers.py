"""More API processes on one host: ``WAITROOM_TICKETING_WORKERS=N``.

One Python process serves HTTP on one core. With ``N > 1`` the process started by the operator
(worker 0: its role as configured, so the sequencer too by default) starts ``N - 1`` more
``python -m waitroom_ticketing`` processes with ``WAITROOM_TICKETING_ROLE=api``. Every worker binds
the public port with ``SO_REUSEPORT``, so the kernel spreads new connections over them; each has
its own read model (it tails room-events like any replica) and its own heartbeat batches. The
extra workers' health and admin listeners take free ports (logged); probes and operators use
worker 0's. A worker that dies is started again after a pause; stopping worker 0 stops them all
(and a worker whose parent is gone is ended by the kernel: ``PR_SET_PDEATHSIG``).

In Kubernetes, scale with replicas (the chart's HPA) rather than workers: one worker per pod
keeps the pod's probes and metrics about all of its traffic.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys

import structlog

from waitroom_platform.runtime import Component

log = structlog.get_logger()

#: pause before a worker that died is started again
RESTART_AFTER_S = 1.0
#: how long a stopping worker may take before it is killed
STOP_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Workers(Component):
    name = "workers"

    def __init__(self, count: int) -> None:
        self._count = count
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False

    def _env(self, index: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "WAITROOM_TICKETING_WORKERS": "1",
                "WAITROOM_TICKETING_WORKER_INDEX": str(index),
                "WAITROOM_TICKETING_ROLE": "api",
                "WAITROOM_TICKETING_HEALTH_PORT": "0",
                "WAITROOM_TICKETING_ADMIN_PORT": "0",
            }
        )
        return env

    async def _spawn(self, index: int) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "waitroom_ticketing",
            env=self._env(index),
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        self._procs[index] = proc
        log.info("worker_started", worker=index, pid=proc.pid)

    async def start(self) -> None:
        for index in range(1, self._count):
            await self._spawn(index)

    async def run(self) -> None:
        while True:
            waits = {asyncio.ensure_future(proc.wait()): index for index, proc in self._procs.items()}
            if not waits:
                await asyncio.Event().wait()
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in done:
                index = waits[task]
                log.warning("worker_exited", worker=index, code=task.result())
                await asyncio.sleep(RESTART_AFTER_S)
                await self._spawn(index)

    async def stop(self) -> None:
        procs = [p for p in self._procs.values() if p.returncode is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._procs.clear()

    def describe(self) -> dict[str, int | None]:
        return {f"worker-{index}": proc.pid for index, proc in self._procs.items()}
