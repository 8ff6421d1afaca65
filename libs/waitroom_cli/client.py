"""The admin API over HTTP, for the console command: one call per operation, errors as :class:`ApiFailure`.

Every failure carries the API's own error code and detail (``{"error": ..., "detail": ...}``) and
the exit code a script can rely on (:class:`Exit`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import IntEnum
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8001"
TOKEN_ENV = "WAITROOM_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a token
#: the ticketing service's own setting: inside its container (``kubectl exec``) the command needs no other
SERVICE_TOKEN_ENV = "WAITROOM_TICKETING_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a token
URL_ENV = "WAITROOM_ADMIN_URL"


class Exit(IntEnum):
    """The command's exit codes (docs/operations.md lists them)."""

    OK = 0
    #: an answer the command did not expect (a 5xx other than 503, a body that is not the API's)
    FAILED = 1
    #: the command line itself is wrong (Click's code for usage errors)
    USAGE = 2
    #: no admin token, or the API refused it (401, 403)
    UNAUTHORIZED = 3
    #: no such room (404)
    NOT_FOUND = 4
    #: the API refused the values (422)
    INVALID = 5
    #: the API cannot be reached, or answers 503 (still reading the log, the log unreachable)
    UNAVAILABLE = 6
    #: ``create`` of a room that exists
    EXISTS = 7


_EXIT_BY_STATUS = {401: Exit.UNAUTHORIZED, 403: Exit.UNAUTHORIZED, 404: Exit.NOT_FOUND, 422: Exit.INVALID}
_EXIT_BY_STATUS[503] = Exit.UNAVAILABLE


class ApiFailure(Exception):
    def __init__(self, code: str, detail: Any, exit_code: Exit, status: int | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.exit_code = exit_code
        self.status = status

    def as_dict(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, "status": self.status}


def failure_of(response: httpx.Response) -> ApiFailure:
    """The API's error as a failure, with the exit code of its status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        code, detail = str(body["error"]), body.get("detail")
    else:
        code, detail = "http_error", response.text[:200] or response.reason_phrase
    exit_code = _EXIT_BY_STATUS.get(response.status_code, Exit.FAILED)
    return ApiFailure(code, detail, exit_code, response.status_code)


class AdminClient:
    def __init__(self, url: str, token: str | None, *, timeout_s: float = 15.0, transport: Any = None) -> None:
        if not token:
            raise ApiFailure("no_token", f"set {TOKEN_ENV} to the admin token", Exit.UNAUTHORIZED)
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout_s,
            transport=transport,
        )
        self.url = url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise ApiFailure("unreachable", f"{self.url}: {exc or type(exc).__name__}", Exit.UNAVAILABLE) from exc
        if response.status_code >= 400:
            raise failure_of(response)
        try:
            return response.status_code, response.json()
        except ValueError as exc:
            raise ApiFailure("bad_answer", "the answer is not JSON", Exit.FAILED, response.status_code) from exc

    # ---------------------------------------------------------------- rooms

    def rooms(self) -> list[dict[str, Any]]:
        rooms: list[dict[str, Any]] = self._call("GET", "/v1/admin/rooms")[1]["rooms"]
        return rooms

    def room(self, room_id: str) -> dict[str, Any]:
        room: dict[str, Any] = self._call("GET", f"/v1/admin/rooms/{quote(room_id, safe='')}")[1]
        return room

    def exists(self, room_id: str) -> bool:
        try:
            self.room(room_id)
        except ApiFailure as failure:
            if failure.exit_code is Exit.NOT_FOUND and failure.code == "room_not_found":
                return False
            raise
        return True

    def configure(self, room_id: str, config: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """``PUT``: 201 created, 200 changed, 202 accepted but not yet visible."""
        status, body = self._call("PUT", f"/v1/admin/rooms/{quote(room_id, safe='')}", config)
        return status, body

    def admit(self, room_id: str, count: int, above_capacity: bool) -> dict[str, Any]:
        body: dict[str, Any] = self._call(
            "POST",
            f"/v1/admin/rooms/{quote(room_id, safe='')}/admit",
            {"count": count, "above_capacity": above_capacity},
        )[1]
        return body

    def stats(self, room_id: str) -> dict[str, Any]:
        stats: dict[str, Any] = self._call("GET", f"/v1/admin/rooms/{quote(room_id, safe='')}/stats")[1]
        return stats

    def events(self, room_id: str | None = None) -> Iterator[tuple[str, Any]]:
        """The console's event stream (Server-Sent Events): ``(event, data)`` as they arrive."""
        params = {"room": room_id} if room_id else None
        try:
            with self._http.stream(
                "GET", "/v1/admin/console/events", params=params, headers={"Accept": "text/event-stream"}, timeout=None
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise failure_of(response)
                yield from parse_sse(response.iter_lines())
        except httpx.TransportError as exc:
            raise ApiFailure("unreachable", f"{self.url}: {exc or type(exc).__name__}", Exit.UNAVAILABLE) from exc


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """``(event, JSON data)`` per event of a text/event-stream; comments (keep-alives) are skipped."""
    event, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
