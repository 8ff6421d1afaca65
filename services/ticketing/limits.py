"""Server limits: what a connection and a request may cost before the app sees them.

uvicorn closes a connection idle *between* requests (``timeout_keep_alive``) but waits for ever on
one that sends nothing or half a request, takes headers of any size, and answers its own errors in
plain text. :func:`limited_protocol` makes uvicorn's httptools protocol bound each of those:

- ``header_timeout_s``: the request line and headers must arrive within this from the connection's
  start (or from the first byte of a kept-alive connection's next request): else 408 and close.
  One sweep per server and loop looks at its connections every ``header_timeout_s / 4`` (at most
  1 s), so a request pays a clock read instead of a timer of its own (a timer set and cancelled
  per request was a few per cent of a status call); a slow connection is closed up to a quarter of
  the timeout late;
- ``max_header_bytes``: more header bytes than this: 431 and close;
- ``max_connections``: a connection beyond this many open in the process gets 503 with
  ``Retry-After`` and is closed (a crowd gets an answer, not a hang);
- a request httptools cannot parse: 400 with the same JSON error body as the app's.

:class:`BodyLimit` (ASGI middleware) answers 413 to a body over ``max_bytes``: at once when
``Content-Length`` says so, before anything is read, or as soon as a chunked body passes the limit.
:class:`AdminAuthFirst` checks the admin token of ``/v1/admin/...`` calls before their body is read.
Every answer here is ``{"error": code, "detail": text}``.
"""

from __future__ import annotations

import asyncio
import hmac
import weakref
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_REASONS = {
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def raw_error(status: int, code: str, detail: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    body = orjson.dumps({"error": code, "detail": detail})
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
        *(name + b": " + value + b"\r\n" for name, value in extra),
        b"\r\n",
        body,
    ]
    return b"".join(lines)


#: per uvicorn server (its ServerState): the pending sweep of its connections' header timeouts
_SWEEPS: weakref.WeakKeyDictionary[Any, asyncio.TimerHandle] = weakref.WeakKeyDictionary()


def _sweep(loop: asyncio.AbstractEventLoop, state: Any, every_s: float) -> None:
    """Close the connections of ``state`` whose headers are late; again in ``every_s`` while it has any."""
    now = loop.time()
    for connection in list(state.connections):
        since = getattr(connection, "_headers_since", None)
        if since is not None and now - since >= connection.header_timeout_s:
            connection._headers_too_slow()
    if state.connections:
        _SWEEPS[state] = loop.call_later(every_s, _sweep, loop, state, every_s)
    else:
        _SWEEPS.pop(state, None)


class _LimitedProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024
    max_connections: int = 10_000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes = self._raw_bytes = 0
        self._in_headers = True
        #: when this request's first bytes (or the connection) came, while its headers are awaited
        self._headers_since: float | None = self.loop.time()
        if self.server_state not in _SWEEPS:  # a sweep runs while the server has connections
            every_s = min(1.0, self.header_timeout_s / 4)
            _SWEEPS[self.server_state] = self.loop.call_later(every_s, _sweep, self.loop, self.server_state, every_s)
        if len(self.connections) > self.max_connections:
            self._refuse(503, "overloaded", "too many connections; retry", [(b"retry-after", b"1")])

    def _refuse(self, status: int, code: str, detail: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self._headers_since = None
        if not self.transport.is_closing():
            self.transport.write(raw_error(status, code, detail, extra))
            self.transport.close()

    def _headers_too_slow(self) -> None:
        self._headers_since = None
        if self._in_headers and (self.cycle is None or self.cycle.response_complete):
            self._refuse(
                408, "request_timeout", f"the request's headers did not arrive within {self.header_timeout_s:g} s"
            )

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._in_headers and self._headers_since is None:
            # the first bytes of a kept-alive connection's next request: its headers get the same time
            self._headers_since = self.loop.time()
        super().data_received(data)
        if self._in_headers:  # headers still incomplete: all of it is header bytes the parser holds
            self._raw_bytes += len(data)
            self._check(self._raw_bytes)

    def _check(self, size: int) -> None:
        if size > self.max_header_bytes:
            self._refuse(431, "headers_too_large", f"request headers over {self.max_header_bytes} bytes")

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        self._check(self._header_bytes)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # a request whose headers came in one read: counted as the parser hands them over
        self._header_bytes += len(name) + len(value) + 4
        self._check(self._header_bytes)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = self._raw_bytes = 0
        self._headers_since = None
        if self.transport.is_closing():
            return  # refused while the headers came in: no app call
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._in_headers = True
        self._header_bytes = self._raw_bytes = 0
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_since = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "invalid_http", msg)


def limited_protocol(*, header_timeout_s: float, max_header_bytes: int, max_connections: int) -> type[Any]:
    """uvicorn's httptools protocol with these limits (pass as ``uvicorn.Config(http=...)``)."""
    return type(
        "LimitedHttpToolsProtocol",
        (_LimitedProtocol,),
        {
            "header_timeout_s": header_timeout_s,
            "max_header_bytes": max_header_bytes,
            "max_connections": max_connections,
        },
    )


class _TooLarge(Exception):
    pass


async def _send_json(
    send: Send, status: int, code: str, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = orjson.dumps({"error": code, "detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    await _send_json(send, 400, "invalid_http", "Content-Length is not a number")
                    return
                if too_large:
                    await _send_json(send, 413, "body_too_large", f"the body is over {self.max_bytes} bytes")
                    return
            elif name == b"transfer-encoding":
                chunked = True
        if not chunked:
            # No body, or one of at most Content-Length bytes (the HTTP parser holds a body to its
            # Content-Length): nothing to count, so no wrapped receive and send on every request.
            await self.app(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, "body_too_large", f"the body is over {self.max_bytes} bytes")


class AdminAuthFirst:
    """The admin token of ``prefix`` calls, checked before anything reads the body (a 10 MB body of
    an anonymous caller is refused unread); the routes check it again as their dependency."""

    def __init__(self, app: ASGIApp, token: str, prefix: str = "/v1/admin/") -> None:
        self.app = app
        self._token = token.encode()
        self._prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self._prefix):
            value = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            scheme, _, token = value.partition(b" ")
            token = token.strip()
            if scheme.lower() != b"bearer" or not token:
                await _send_json(send, 401, "unauthorized", "admin calls need Authorization: Bearer <admin token>")
                return
            if not hmac.compare_digest(token, self._token):
                await _send_json(send, 403, "forbidden", "the admin token is not valid")
                return
        await self.app(scope, receive, send)
