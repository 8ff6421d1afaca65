"""A Server-Sent Events reader for tests: the events of one streaming ``httpx`` response."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class ServerEvent:
    event: str
    data: Any
    id: str | None
    received_at: float = field(default_factory=time.time)


@dataclass
class StreamReader:
    """Reads ``response``'s events; comments and ``retry:`` are kept as counts and a value."""

    response: httpx.Response
    comments: int = 0
    retry_ms: int | None = None
    _lines: AsyncIterator[str] | None = None

    async def next(self) -> ServerEvent:
        if self._lines is None:
            self._lines = self.response.aiter_lines()
        fields: dict[str, str] = {}
        async for line in self._lines:
            if line == "":
                if "data" in fields:
                    data = json.loads(fields["data"])
                    return ServerEvent(fields.get("event", "message"), data, fields.get("id"))
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "retry":
                self.retry_ms = int(value)
            else:
                fields[name] = value
        raise EOFError("the stream ended")

    async def until(self, predicate: Any) -> ServerEvent:
        while True:
            event = await self.next()
            if predicate(event):
                return event
