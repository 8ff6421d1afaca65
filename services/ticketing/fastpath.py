"""The join answered straight from the ASGI scope, in front of FastAPI.

A join is the one visitor call that every visitor makes and whose own work is small next to the
framework's. py-spy on the join row of ``bench/http_joins.py`` put FastAPI and Starlette (the
middleware stack, routing, the request object, the response class) at about half of the API
loop's CPU per join, our handler and the Kafka client at the other half. ``JoinFastPath`` takes
``POST /v1/rooms/{room_id}/tickets`` before any of it, when the request is a plain one:

* the room id matches ``ROOM_ID`` and an ``Idempotency-Key``, if sent, matches its pattern;
* the body, if any, is no larger than the public listener's limit and not chunked;
* nothing instruments the app (no span or metric exporter: the server spans and ``http.server``
  metrics come from FastAPI's instrumentation).

Anything else goes to the FastAPI app unchanged, which also answers every refusal of the checks
above (422, 413) as it always has. The answer is the route's own: both run ``api.join_answer``,
and an ``ApiError`` or an unexpected error is rendered as the app's handlers render it, so a
client cannot tell the two paths apart (``tests/unit/test_fastpath.py`` compares them). The
route stays in the OpenAPI document, which the fast path does not change.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from waitroom_ticketing.api import IDEMPOTENCY_KEY_RE, ROOM_ID, UNEXPECTED, ApiError, Services, join_answer

log = structlog.get_logger()

_JOIN_PATH = re.compile("/v1/rooms/(" + ROOM_ID.removeprefix("^").removesuffix("$") + ")/tickets")


class JoinFastPath:
    def __init__(self, app: ASGIApp, services: Services, *, max_body_bytes: int) -> None:
        self.app = app
        self.services = services
        self.max_body_bytes = max_body_bytes
        self.answered = 0  # joins this path answered (the rest went to the app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match = _JOIN_PATH.fullmatch(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        key: str | None = None
        forwarded: list[str] = []
        for name, value in scope["headers"]:
            if name == b"idempotency-key":
                if key is None:
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
        client = scope.get("client")

        def client_key() -> str:
            return svc.client_key_of(client[0] if client else None, forwarded)

        headers: dict[str, str] | None
        try:
            status, body, headers = await join_answer(svc, match.group(1), key, client_key)
        except ApiError as exc:
            status, body, headers = exc.status, {"error": exc.code, "detail": exc.detail}, exc.headers
        except Exception as exc:
            log.exception("unhandled_error", error=type(exc).__name__)
            status, body, headers = 500, {"error": UNEXPECTED[0], "detail": UNEXPECTED[1]}, None
        self.answered += 1
        await _send_json(send, status, body, headers)


async def _send_json(send: Send, status: int, body: Any, headers: dict[str, str] | None) -> None:
    """The bytes Starlette's ``JSONResponse`` (rendered by orjson, as the app's is) would send."""
    content = orjson.dumps(body)
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    raw += [(b"content-length", str(len(content)).encode()), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})
