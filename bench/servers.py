"""The HTTP server under the same bare app: uvicorn (what ticketing runs) against granian.

``python -m bench.servers --duration 10 --rounds 2 [--write-docs]``

The baseline app of ``bench/baseline_app.py`` (bare FastAPI, the heartbeat and status shapes) is
served once by uvicorn as ticketing serves it (``Server.serve()`` on uvloop, httptools) and once
by granian (``--interface asgi``, one worker, uvloop), and loaded in turns by the same client
(wrk when installed) with the same connections. The rounds alternate the servers, so a change of
the machine's other load shows as a spread, not as a difference between them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from bench.common import REPO_ROOT, Broker, CpuMeter, markdown_table, run_facts, say, write_section
from bench.loadgen import RequestSpec, run_load, wrk_available
from waitroom_devtools.procs import ServiceProcess, free_port
from waitroom_platform.logging import configure_logging

SECTION = "HTTP servers: uvicorn and granian"
TICKET = str(uuid.UUID(int=1, version=4))


def servers(work_dir: Path) -> dict[str, ServiceProcess]:
    uv_port, gr_port = free_port(), free_port()
    env = {"PYTHONPATH": str(REPO_ROOT)}
    uvicorn_proc = ServiceProcess(
        "uvicorn",
        "bench.baseline_app",
        env,
        work_dir / "uvicorn.log",
        ready_url=f"http://127.0.0.1:{uv_port}/readyz",
        args=("--port", str(uv_port)),
    )
    granian_proc = ServiceProcess(
        "granian",
        "granian",
        env,
        work_dir / "granian.log",
        ready_url=f"http://127.0.0.1:{gr_port}/readyz",
        args=(
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(gr_port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--no-ws",
            "--log-level",
            "warning",
            "--factory",
            "bench.baseline_app:create_app",
        ),
    )
    return {"uvicorn": uvicorn_proc, "granian": granian_proc}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    configure_logging("WARNING", "console", service="bench")
    if shutil.which("granian") is None:
        raise SystemExit("granian is not installed (pip install granian)")
    client = "wrk" if wrk_available() else "python"
    shapes = {
        "heartbeat": [RequestSpec("POST", f"/v1/rooms/r/tickets/{TICKET}/heartbeat", "Bearer x")],
        "status": [RequestSpec("GET", f"/v1/rooms/r/tickets/{TICKET}", "Bearer x")],
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="waitroom-bench-") as tmp:
        procs = servers(Path(tmp))
        for proc in procs.values():
            proc.start()
        try:
            for proc in procs.values():
                proc.wait_ready(60)
            for round_no in range(1, args.rounds + 1):
                for shape, specs in shapes.items():
                    for name, proc in procs.items():
                        assert proc.ready_url is not None
                        url = proc.ready_url.removesuffix("/readyz")
                        meter = CpuMeter({"server": proc.pid})
                        meter.start()
                        result = run_load(
                            client, url, specs, connections=args.connections, duration_s=args.duration, max_requests=0
                        )
                        cores = meter.stop().get("server")
                        ms = None if not cores or not result.throughput else cores / result.throughput * 1000
                        say(f"  round {round_no} {shape:9} {name:8} {result.throughput:8.0f} req/s")
                        rows.append(
                            [
                                round_no,
                                shape,
                                name,
                                f"{result.throughput:.0f}",
                                f"{result.p50_ms:.1f}",
                                f"{result.p99_ms:.1f}",
                                None if cores is None else f"{cores:.2f}",
                                None if ms is None else f"{ms:.3f}",
                            ]
                        )
        finally:
            for proc in procs.values():
                proc.stop()
    table = markdown_table(
        ["round", "shape", "server", "req/s", "p50 ms", "p99 ms", "server CPU (cores)", "server CPU ms/request"], rows
    )
    broker = Broker("none", "no broker (bare app)", None)
    text = "\n".join(
        [
            run_facts(broker),
            f"- client: {client}, {args.connections} connections, {args.duration:g} s per row; "
            f"{os.cpu_count()} CPUs shared by client and servers",
            "",
            table,
        ]
    )
    sys.stdout.write(text + "\n")
    if args.write_docs:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
