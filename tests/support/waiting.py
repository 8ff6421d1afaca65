"""One way for tests to wait for an effect: ``await eventually(condition, timeout)``.

``condition`` is called (and awaited, if it returns an awaitable) until it returns something truthy,
which is returned; after ``timeout`` seconds the test fails, saying what it waited for and, when
``seen`` is given, what it saw last. Tests wait for effects this way instead of sleeping for a
time that is long enough on a quiet machine.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

DEFAULT_INTERVAL_S = 0.1


async def eventually(
    condition: Callable[[], Any],
    timeout: float,
    what: str = "the condition",
    *,
    interval: float = DEFAULT_INTERVAL_S,
    seen: Callable[[], Any] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            suffix = f"; seen: {seen()}" if seen is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{suffix}")
        await asyncio.sleep(interval)


def eventually_sync(
    condition: Callable[[], Any], timeout: float, what: str = "the condition", *, interval: float = 0.05
) -> Any:
    """The same, for tests that run no event loop."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
