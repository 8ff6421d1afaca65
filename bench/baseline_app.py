"""The baseline: bare FastAPI endpoints shaped like a join, a heartbeat and a status call, served
as ticketing is served.

No Kafka, no read model, no tokens: what is left is FastAPI, uvicorn, path validation and a JSON body
of a ticket's size. Served exactly like ``python -m waitroom_ticketing``: one process, the uvicorn
options of its composition root, ``Server.serve()`` on uvloop where installed (so the same event loop),
structlog at the same level. The ratio of ticketing's figures to these is what waitroom itself costs.

``python -m bench.baseline_app --port 8001``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import os
import socket
import subprocess
import sys
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from waitroom_platform.logging import configure_logging
from waitroom_ticketing.api import RoomId, TicketId


def _ticket(room_id: str, ticket_id: str, queue_no: int, ticket_token: str | None) -> dict[str, Any]:
    """The fields of a waiting ticket, so the body has the size of ticketing's answer."""
    return {
        "ticket_id": ticket_id,
        "room_id": room_id,
        "queue_no": queue_no,
        "state": "waiting",
        "position": max(0, queue_no - 101),
        "estimated_wait_s": None,
        "heartbeat_interval_s": 5.0,
        "heartbeat_timeout_s": 20.0,
        "entry_token": None,
        "ticket_token": ticket_token,
    }


def create_app() -> FastAPI:
    app = FastAPI(title="baseline", docs_url=None, redoc_url=None)
    numbers = itertools.count(1)

    @app.post("/v1/rooms/{room_id}/tickets", status_code=201)
    async def join(room_id: RoomId) -> Response:
        token = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        body = _ticket(room_id, str(uuid.uuid4()), next(numbers), token)
        return JSONResponse(body, status_code=201)

    @app.post("/v1/rooms/{room_id}/tickets/{ticket_id}/heartbeat")
    async def heartbeat(room_id: RoomId, ticket_id: TicketId) -> Response:
        return JSONResponse(_ticket(room_id, ticket_id, 500, None))

    @app.get("/v1/rooms/{room_id}/tickets/{ticket_id}")
    async def status(room_id: RoomId, ticket_id: TicketId) -> Response:
        return JSONResponse(_ticket(room_id, ticket_id, 500, None))

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> dict[str, bool]:
        return {"ready": True}

    return app


def _die_with_parent() -> None:
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    args = parser.parse_args(argv)
    children = [
        subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "bench.baseline_app", "--host", args.host, "--port", str(args.port)],
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - a SIGKILLed parent leaves no worker behind
        )
        for _ in range(args.workers - 1)
    ]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as ticketing's workers
    sock.bind((args.host, args.port))
    configure_logging("INFO", "json", service="baseline")
    # The same options as ticketing's composition root (services/ticketing/__main__.py).
    config = uvicorn.Config(
        create_app(),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=75,
        backlog=4096,
    )
    server = uvicorn.Server(config)
    try:
        import uvloop
    except ImportError:
        asyncio.run(server.serve(sockets=[sock]))
    else:
        uvloop.run(server.serve(sockets=[sock]))
    finally:
        for child in children:
            child.terminate()


if __name__ == "__main__":
    main()
