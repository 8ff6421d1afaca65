"""Server limits (services/ticketing/limits.py) on a real uvicorn server over loopback sockets:
silent and slow connections are closed, huge headers and bodies refused, a crowd beyond the
connection limit answered 503, unparseable requests answered with the JSON error body, and an
anonymous admin call refused before its body is read."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI, Request

from waitroom_ticketing.__main__ import HttpServer, http_config
from waitroom_ticketing.limits import AdminAuthFirst, BodyLimit
from waitroom_ticketing.settings import TicketingSettings

pytestmark = pytest.mark.asyncio

TOKEN = "limits-admin-token-0123456789"


def app_under_test(body_reads: list[int]) -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        body = await request.body()
        body_reads.append(len(body))
        return {"bytes": len(body)}

    @app.post("/v1/admin/rooms/x")
    async def admin_call(request: Request) -> dict[str, int]:
        body = await request.body()
        body_reads.append(len(body))
        return {"bytes": len(body)}

    app.add_middleware(BodyLimit, max_bytes=1024)
    app.add_middleware(AdminAuthFirst, token=TOKEN)
    return app


@asynccontextmanager
async def serving(body_reads: list[int], **limits: Any) -> AsyncIterator[tuple[str, int]]:
    settings = TicketingSettings(**limits)
    server = HttpServer(http_config(app_under_test(body_reads), "127.0.0.1", 0, settings))
    await server.start()
    task = asyncio.create_task(server.run())
    try:
        while not server.ready():
            await asyncio.sleep(0.01)
        assert server.url is not None
        host, port = server.url.removeprefix("http://").split(":")
        yield host, int(port)
    finally:
        await server.drain()
        await asyncio.wait_for(task, 15)
        await server.stop()


async def exchange(host: str, port: int, data: bytes, *, timeout: float = 5.0) -> tuple[int, dict[str, Any], bytes]:
    """Send ``data``, read until the server closes: (status, JSON body or {}, raw answer)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head else 0
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        parsed = {}
    return status, parsed, raw


async def test_a_connection_that_sends_nothing_is_answered_408_and_closed_after_the_header_timeout() -> None:
    async with serving([], header_timeout_s=0.3) as (host, port):
        started = asyncio.get_running_loop().time()
        status, body, _ = await exchange(host, port, b"")
        took = asyncio.get_running_loop().time() - started
    assert status == 408 and body["error"] == "request_timeout"
    assert took < 3


async def test_half_a_request_is_closed_after_the_header_timeout() -> None:
    async with serving([], header_timeout_s=0.3) as (host, port):
        status, body, _ = await exchange(host, port, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert (status, body["error"]) == (408, "request_timeout")


async def test_headers_over_the_limit_are_answered_431() -> None:
    big = b"X-Big: " + b"a" * 20_000 + b"\r\n"
    async with serving([], max_header_bytes=4096) as (host, port):
        status, body, _ = await exchange(host, port, b"GET /echo HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    assert (status, body["error"]) == (431, "headers_too_large")


async def test_a_body_over_the_limit_is_refused_413_before_it_is_read() -> None:
    reads: list[int] = []
    async with serving(reads) as (host, port):
        request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\nConnection: close\r\n\r\n"
        status, body, _ = await exchange(host, port, request + b"a" * 1000)
    assert (status, body["error"]) == (413, "body_too_large")
    assert reads == []


async def test_a_chunked_body_is_cut_off_at_the_limit() -> None:
    reads: list[int] = []
    chunk = b"%x\r\n%s\r\n" % (800, b"a" * 800)
    async with serving(reads) as (host, port):
        request = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        status, body, _ = await exchange(host, port, request + chunk * 3 + b"0\r\n\r\n")
    assert (status, body["error"]) == (413, "body_too_large")
    assert reads == []


async def test_a_small_body_goes_through() -> None:
    reads: list[int] = []
    async with serving(reads) as (host, port):
        request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        status, body, _ = await exchange(host, port, request)
    assert (status, body) == (200, {"bytes": 5})


async def test_an_unparseable_request_gets_the_json_error_body() -> None:
    async with serving([]) as (host, port):
        status, body, raw = await exchange(host, port, b"\x16\x03\x01 not http at all\r\n\r\n")
    assert status == 400 and body["error"] == "invalid_http"
    assert b"content-type: application/json" in raw


async def test_connections_beyond_the_limit_are_answered_503_with_retry_after() -> None:
    async with serving([], max_connections=3) as (host, port):
        held = [await asyncio.open_connection(host, port) for _ in range(3)]
        try:
            await asyncio.sleep(0.1)
            status, body, raw = await exchange(host, port, b"")
        finally:
            for _, writer in held:
                writer.close()
    assert (status, body["error"]) == (503, "overloaded")
    assert b"retry-after: 1" in raw


async def test_an_admin_call_without_the_token_is_refused_before_its_body_is_read() -> None:
    reads: list[int] = []
    async with serving(reads) as (host, port):
        anonymous = b"POST /v1/admin/rooms/x HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\nConnection: close\r\n\r\n"
        status, body, _ = await exchange(host, port, anonymous + b"{" * 500)
        wrong = anonymous.replace(b"Host: x\r\n", b"Host: x\r\nAuthorization: Bearer nope\r\n")
        status_wrong, body_wrong, _ = await exchange(host, port, wrong + b"{" * 500)
        right = anonymous.replace(b"Host: x\r\n", b"Host: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n")
        status_right, _, _ = await exchange(host, port, right + b"{" * 500)
    assert (status, body["error"]) == (401, "unauthorized")
    assert (status_wrong, body_wrong["error"]) == (403, "forbidden")
    assert status_right == 200 and reads == [500]
