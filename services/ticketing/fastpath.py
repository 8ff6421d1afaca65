"""The visitors' three hottest calls answered straight from the ASGI scope, in front of FastAPI.

Every visitor joins, and every waiting visitor polls its status or heartbeats every few seconds.
For these calls our own work is small next to the framework's: py-spy on the join row of
``bench/http_joins.py`` put FastAPI and Starlette (the middleware stack, routing, the request
object, the response class) at about half of the API loop's CPU per join. ``VisitorFastPath``
takes, before any of it, when the request is a plain one:

* ``POST /v1/rooms/{room_id}/tickets`` (join): an ``Idempotency-Key``, if sent, matches its pattern;
* ``GET /v1/rooms/{room_id}/tickets/{ticket_id}`` (status);
* ``POST /v1/rooms/{room_id}/tickets/{ticket_id}/heartbeat``;

with the ids matching their patterns, a body (if any) no larger than the public listener's limit
and not chunked, and nothing instrumenting the app (no span or metric exporter: server spans and
``http.server`` metrics come from FastAPI's instrumentation).

Anything else goes to the FastAPI app unchanged, which also answers every refusal of the checks
above (422, 413) as it always has. The answers are the routes' own: both run
``api.join_answer``, ``api.status_answer`` or ``api.heartbeat_answer``, and an ``ApiError`` or an
unexpected error is rendered as the app's handlers render it, so a client cannot tell the two
paths apart (``tests/unit/test_api.py`` runs every test on both; ``tests/unit/test_fastpath.py``
compares their bytes). The routes stay in the OpenAPI document, which this does not change.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from waitroom_ticketing.api import (
    IDEMPOTENCY_KEY_RE,
    ROOM_ID,
    TICKET_ID,
    UNEXPECTED,
    Answer,
    ApiError,
    Services,
    error_body,
    heartbeat_answer,
    join_answer,
    status_answer,
)

log = structlog.get_logger()


def _bare(pattern: str) -> str:
    return pattern.removeprefix("^").removesuffix("$")


_ROOM, _TICKET = _bare(ROOM_ID), _bare(TICKET_ID)
_JOIN = re.compile(f"/v1/rooms/({_ROOM})/tickets")
_TICKET_PATH = re.compile(f"/v1/rooms/({_ROOM})/tickets/({_TICKET})(/heartbeat)?")


class VisitorFastPath:
    def __init__(self, app: ASGIApp, services: Services, *, max_body_bytes: int) -> None:
        self.app = app
        self.services = services
        self.max_body_bytes = max_body_bytes
        self.answered = 0  # calls this path answered (the rest went to the app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        join = ticket = None
        if method == "POST":
            join = _JOIN.fullmatch(path)
            if join is None:
                ticket = _TICKET_PATH.fullmatch(path)
                if ticket is not None and ticket.group(3) is None:
                    ticket = None  # a POST of the ticket itself: the app's 405
        elif method == "GET":
            ticket = _TICKET_PATH.fullmatch(path)
            if ticket is not None and ticket.group(3) is not None:
                ticket = None  # a GET of the heartbeat: the app's 405
        if join is None and ticket is None:
            await self.app(scope, receive, send)
            return
        key: str | None = None
        authorization: str | None = None
        forwarded: list[str] = []
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
            elif name == b"idempotency-key":
                if join is not None and key is None:
                    key = value.decode("latin-1")
                    if IDEMPOTENCY_KEY_RE.fullmatch(key) is None:
                        await self.app(scope, receive, send)  # the app's 422, field and all
                        return
            elif name == b"content-length":
                if not value.isdigit() or int(value) > self.max_body_bytes:
                    await self.app(scope, receive, send)  # the app's 400 or 413
                    return
            elif name == b"transfer-encoding":
                await self.app(scope, receive, send)  # a chunked body: the app counts it
                return
            elif name == b"x-forwarded-for":
                forwarded.append(value.decode("latin-1"))
        svc = self.services
        try:
            answer: Answer
            if join is not None:
                client = scope.get("client")

                def client_key() -> str:
                    return svc.client_key_of(client[0] if client else None, forwarded)

                answer = await join_answer(svc, join.group(1), key, client_key)
            elif ticket is not None and ticket.group(3) is None:
                answer = status_answer(svc, ticket.group(1), ticket.group(2), authorization)
            elif ticket is not None:
                answer = await heartbeat_answer(svc, ticket.group(1), ticket.group(2), authorization)
        except ApiError as exc:
            answer = exc.status, error_body(exc.code, exc.detail), exc.headers
        except Exception as exc:
            log.exception("unhandled_error", error=type(exc).__name__)
            answer = 500, error_body(*UNEXPECTED), None
        self.answered += 1
        await _send_json(send, *answer)


async def _send_json(send: Send, status: int, body: Any, headers: dict[str, str] | None) -> None:
    """The bytes Starlette's ``JSONResponse`` (rendered by orjson, as the app's is) would send."""
    content = orjson.dumps(body)
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    raw += [(b"content-length", str(len(content)).encode()), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})
