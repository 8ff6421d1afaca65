"""One runtime for every service: components started in order, stopped in reverse, one exit code.

A service is a list of :class:`Component` objects. The :class:`Supervisor` starts them one after
the other (a component may rely on every one before it), runs each one's ``run()`` as a task, and
ends the process on SIGTERM/SIGINT or on the first component whose ``start()`` or ``run()`` fails,
or whose ``run()`` ends: that failure is logged once, with the component's name, and the exit code
is 1 (2 when a component says it is :class:`Misconfigured`). Stopping goes in reverse
order: ``drain()`` asks a component to finish what it has in hand (an HTTP server completes its
in-flight requests), its run task is cancelled if it has not ended within the grace period, then
``stop()`` releases what ``start()`` opened.

``alive`` is false once any component failed (the health server, started first and stopped last,
answers 503 on ``/healthz`` while the others stop); ``ready`` is true while every component says it
is ready. A signal that arrives while a component is still starting (say, waiting for AWS) cancels
the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import structlog
from pydantic_settings import BaseSettings

log = structlog.get_logger()

S = TypeVar("S", bound=BaseSettings)
T = TypeVar("T")

#: how long a component may take to finish its run after ``drain()`` before it is cancelled
DEFAULT_GRACE_S = 10.0
#: how often the supervisor looks whether the service has become ready (for its one log line)
READY_POLL_S = 0.05
#: how long ``stop()`` of one component may take before the next one is stopped anyway
STOP_TIMEOUT_S = 10.0
#: a component taking longer than this to stop is named in the log
SLOW_STOP_S = 2.0


class Component:
    """A part of a service with a lifecycle. Subclasses override what they need."""

    name: str = "component"

    async def start(self) -> None:
        """Open what the component needs; return once ``run()`` may begin."""

    async def run(self) -> None:
        """The component's work, until cancelled. Returning or raising ends the process."""
        await asyncio.Event().wait()

    async def drain(self) -> None:
        """Ask ``run()`` to finish on its own; the supervisor then waits up to the grace period
        before it cancels it. Components that do not override this are cancelled at once."""

    async def stop(self) -> None:
        """Release what ``start()`` opened; ``run()`` has ended."""

    def ready(self) -> bool:
        """Whether the component can do its job now (``/readyz``)."""
        return True

    def alive(self) -> bool:
        """False when the component knows it is broken beyond repair (``/healthz``)."""
        return True

    def drains(self) -> bool:
        """Whether ``run()`` finishes by itself once ``drain()`` was called (else it is cancelled
        at once): true for a component that overrides ``drain``."""
        return type(self).drain is not Component.drain


class Misconfigured(Exception):
    """A component cannot work with the settings it was given: the process exits with code 2."""

    exit_code = 2


class ComponentEnded(Exception):
    """A component's ``run()`` returned although it should run until stopped."""


class Supervisor:
    def __init__(self, service: str, components: Sequence[Component], *, grace_s: float = DEFAULT_GRACE_S) -> None:
        names = [c.name for c in components]
        if len(set(names)) != len(names):
            raise ValueError(f"component names must be unique: {names}")
        self.service = service
        self.components = list(components)
        self.grace_s = grace_s
        self._started: list[Component] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._failed: tuple[str, BaseException] | None = None

    # ---------------------------------------------------------------- what the probes read

    @property
    def alive(self) -> bool:
        return self._failed is None and all(c.alive() for c in self._started)

    @property
    def ready(self) -> bool:
        return (
            self.alive
            and not self._stop.is_set()
            and len(self._started) == len(self.components)
            and all(c.ready() for c in self.components)
        )

    @property
    def failure(self) -> tuple[str, BaseException] | None:
        """The first component that failed and why."""
        return self._failed

    def request_stop(self) -> None:
        self._stop.set()

    # ---------------------------------------------------------------- the lifecycle

    async def run(self, *, handle_signals: bool = True) -> int:
        """Start everything, wait for a signal or the first failure, stop everything; the exit code."""
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
        try:
            if await self._start_all():
                log.info(f"{self.service}_started", components=[c.name for c in self.components])
                await self._wait_for_end()
        finally:
            await self._stop_all()
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        if self._failed is not None:
            return 2 if isinstance(self._failed[1], Misconfigured) else 1
        log.info(f"{self.service}_stopped")
        return 0

    async def _start_all(self) -> bool:
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            for component in self.components:
                starting = asyncio.ensure_future(component.start())
                await asyncio.wait([starting, stopper], return_when=asyncio.FIRST_COMPLETED)
                if not starting.done():
                    starting.cancel()
                    await asyncio.gather(starting, return_exceptions=True)
                    log.info("start_interrupted", service=self.service, component=component.name)
                    self._started.append(component)  # may hold half of what it opens: stop it too
                    return False
                error = starting.exception()
                self._started.append(component)
                if error is not None:
                    self._fail(component.name, error)
                    return False
                task = asyncio.create_task(component.run(), name=component.name)
                task.add_done_callback(self._on_run_done)
                self._tasks[component.name] = task
            return True
        finally:
            stopper.cancel()

    def _on_run_done(self, task: asyncio.Task[None]) -> None:
        if self._stop.is_set() or task.cancelled():
            return
        error = task.exception()
        self._fail(task.get_name(), error if error is not None else ComponentEnded(task.get_name()))

    def _fail(self, name: str, error: BaseException) -> None:
        if self._failed is None:
            self._failed = (name, error)
            # A misconfiguration is told in its message; its traceback would only bury it.
            trace = None if isinstance(error, Misconfigured) else error
            log.error("component_failed", service=self.service, component=name, error=repr(error), exc_info=trace)
        self._stop.set()

    async def _wait_for_end(self) -> None:
        """Until stopped; logs ``<service>_ready`` once, when every component first says it is ready."""
        while not self.ready:
            try:
                await asyncio.wait_for(self._stop.wait(), READY_POLL_S)
                return
            except TimeoutError:
                continue
        log.info(f"{self.service}_ready")
        await self._stop.wait()

    async def _stop_all(self) -> None:
        self._stop.set()
        for component in reversed(self._started):
            task = self._tasks.get(component.name)
            began = asyncio.get_running_loop().time()
            try:
                if task is not None and not task.done():
                    if component.drains():
                        await asyncio.wait_for(component.drain(), self.grace_s)
                        await asyncio.wait([task], timeout=self.grace_s)
                    task.cancel()
                    await asyncio.wait([task], timeout=STOP_TIMEOUT_S)
                    if not task.done():
                        log.warning("component_did_not_stop", service=self.service, component=component.name)
                await asyncio.wait_for(component.stop(), STOP_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - stopping: the others must still be stopped
                log.warning("component_stop_failed", service=self.service, component=component.name, error=repr(exc))
            took = asyncio.get_running_loop().time() - began
            if took > SLOW_STOP_S:  # a drain that does not end its run shows here, by name
                log.warning(
                    "component_stop_slow", service=self.service, component=component.name, seconds=round(took, 1)
                )


class Task(Component):
    """A component that is just a coroutine to run until stopped (a loop with nothing to open)."""

    def __init__(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self._work = work

    async def run(self) -> None:
        await self._work()


class OwnLoop(Component):
    """A component on an event loop of its own, in a thread of its own.

    What it is for: the sequencer's consumer-group heartbeats must reach the broker within the
    session (3 s) whatever the HTTP side of the same process does. On one loop, a crowd that
    saturates the API delays every other callback by the length of a loop iteration, which grows
    with the backlog: the member is evicted, its takeover never completes before the next eviction,
    and the partition stops (the soak under a profiler showed exactly that). On its own loop the
    component gets the interpreter at every switch interval (5 ms) however busy the API's loop is.

    The component is built by ``factory`` on its loop (asyncio objects bind to the loop that first
    uses them), and every lifecycle call runs there: a cancelled call is cancelled there too and
    waited for. It shares no state with the rest of the process but plain reads (``ready``).
    """

    def __init__(self, name: str, factory: Callable[[], Component]) -> None:
        self.name = name
        self._factory = factory
        self.inner: Component | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._loop_started = threading.Event()

    def _serve(self) -> None:
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._loop_started.set()
        try:
            loop.run_forever()
        finally:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _there(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``work()`` on the component's loop until it ends; cancelling this cancels it there
        and waits until it has ended."""
        loop = self._loop
        assert loop is not None
        here = asyncio.get_running_loop()
        done: asyncio.Future[None] = here.create_future()
        started: list[asyncio.Task[None]] = []
        cancelling = False

        def settle(task: asyncio.Task[None]) -> None:
            if done.done():
                return
            if task.cancelled():  # by us; cancelled by itself, it ended without being asked to
                done.cancel() if cancelling else done.set_exception(ComponentEnded(self.name))
            elif (error := task.exception()) is not None:
                done.set_exception(error)
            else:
                done.set_result(None)

        def launch() -> None:
            task = loop.create_task(work())
            started.append(task)
            task.add_done_callback(lambda t: here.call_soon_threadsafe(settle, t))

        loop.call_soon_threadsafe(launch)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            if not done.done():
                cancelling = True
                loop.call_soon_threadsafe(lambda: started[0].cancel())  # launch ran first: FIFO
                with contextlib.suppress(BaseException):
                    await done
            raise

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._loop_started.wait)

        async def build_and_start() -> None:
            self.inner = self._factory()
            await self.inner.start()

        await self._there(build_and_start)

    async def run(self) -> None:
        assert self.inner is not None
        await self._there(self.inner.run)

    def call_soon(self, callback: Callable[..., object], *args: Any) -> bool:
        """Run ``callback(*args)`` on the component's loop, from any thread; ``False`` (and not
        run) when that loop is not running (not started yet, or stopped)."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return False
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # closed in between
            return False
        return True

    def drains(self) -> bool:
        return self.inner is not None and self.inner.drains()

    async def drain(self) -> None:
        if self.inner is not None:
            await self._there(self.inner.drain)

    async def stop(self) -> None:
        try:
            if self.inner is not None:
                await self._there(self.inner.stop)
        finally:
            if self._loop is not None and self._thread is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                await asyncio.to_thread(self._thread.join, STOP_TIMEOUT_S)

    def ready(self) -> bool:
        return self.inner is not None and self.inner.ready()

    def alive(self) -> bool:
        return self.inner is None or self.inner.alive()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop of uvloop where installed, else of asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_on_uvloop(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop where installed (uvicorn[standard] brings it), else asyncio's loop."""
    runner: Callable[[Coroutine[Any, Any, T]], T]
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    return runner(main)
