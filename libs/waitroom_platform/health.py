"""The health port every service serves: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

* ``/healthz``: 200 while every component is alive, 503 once one failed (the process is then
  stopping, or should be restarted);
* ``/readyz``: 200 once every component is started and ready, 503 before and while stopping;
* ``/metrics``: the Prometheus text format of ``prometheus_client``'s registry. OpenTelemetry
  metrics reach it through the OpenTelemetry Prometheus reader that ``setup_telemetry`` installs;
  services add their own collectors to the same registry.

The server is a few lines on asyncio's streams rather than a web framework: it has three fixed
routes, answers one request per connection, and must not pull an ASGI stack into services that
have no HTTP API (the reaper, stats, the notifier). It reads at most one request head of
``MAX_HEAD`` bytes within ``READ_TIMEOUT_S`` and ignores any body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from waitroom_platform.runtime import Component

log = structlog.get_logger()

READ_TIMEOUT_S = 5.0
MAX_HEAD = 8192


class HealthServer(Component):
    name = "health"

    def __init__(
        self,
        host: str,
        port: int,
        alive: Callable[[], bool],
        ready: Callable[[], bool],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._host = host
        self._port = port
        self._alive = alive
        self._ready = ready
        self._registry = registry
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port, limit=MAX_HEAD)
        log.info("health_listening", url=self.url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=READ_TIMEOUT_S)
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            status, content_type, body = self.answer(method, path.split("?", 1)[0])
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
                + (b"" if method == "HEAD" else body)
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def answer(self, method: str, path: str) -> tuple[str, str, bytes]:
        """Status line, content type and body for one request."""
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "application/json", _json({"error": "method_not_allowed"})
        if path == "/healthz":
            if self._alive():
                return "200 OK", "application/json", _json({"status": "ok"})
            return "503 Service Unavailable", "application/json", _json({"status": "failed"})
        if path == "/readyz":
            if self._ready():
                return "200 OK", "application/json", _json({"status": "ready"})
            return "503 Service Unavailable", "application/json", _json({"status": "starting"})
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        return "404 Not Found", "application/json", _json({"error": "not_found"})


def _json(body: dict[str, str]) -> bytes:
    return json.dumps(body).encode()
