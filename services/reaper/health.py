"""A minimal HTTP endpoint for probes and numbers: ``/healthz``, ``/readyz``, ``/metrics`` (JSON).

The reaper has no HTTP API of its own, so this stays on asyncio's streams instead of a web
framework; it reads the request line only and answers every request with one small body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger()


class HealthServer:
    def __init__(self, host: str, port: int, ready: Callable[[], bool], metrics: Callable[[], dict[str, Any]]) -> None:
        self._host = host
        self._port = port
        self._ready = ready
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        log.info("health_listening", url=f"http://{self._host}:{self.port}")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = request_line.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else "/"
            status, body = self._answer(path)
            payload = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, path: str) -> tuple[str, dict[str, Any]]:
        if path == "/healthz":
            return "200 OK", {"status": "ok"}
        if path == "/readyz":
            if self._ready():
                return "200 OK", {"status": "ready"}
            return "503 Service Unavailable", {"status": "starting"}
        if path == "/metrics":
            return "200 OK", self._metrics()
        return "404 Not Found", {"error": "not_found"}
