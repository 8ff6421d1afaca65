"""The whole system as ``make dev`` starts it, for the benches that measure it (soak, HTTP).

:func:`dev_stack` runs ``waitroom_devtools.devstack``'s services (ticketing, moto, reaper,
notifier, stats), each as its own process with the development settings, on an embedded Kafka of
the bench's own unless a cluster is given; only ticketing's join limit per client address is off
(one load generator is one address).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

from bench.common import Broker, broker_for_bench, say
from waitroom_devtools import devstack
from waitroom_devtools.procs import ServiceProcess, free_ports
from waitroom_events.topics import TopicRegistry, topic_registry
from waitroom_platform.admin import ensure_topics


@dataclass
class RunningStack:
    api: str
    admin: str
    topics: TopicRegistry
    bootstrap: str
    broker: Broker
    stack: devstack.Stack

    @property
    def stats_group(self) -> str:
        """The stats service's consumer group (its default: ``<topic prefix>.stats``)."""
        return self.topics.commands.name.removesuffix(".commands") + ".stats"

    def pids(self) -> dict[str, int]:
        found = {name: proc.pid for name, proc in self.stack.procs.items()}
        if self.broker.pid is not None:
            found["kafka (JVM)"] = self.broker.pid
        return found

    @property
    def ticketing(self) -> ServiceProcess:
        return self.stack.procs["ticketing"]

    def other_pids(self) -> dict[str, int]:
        """The services' processes other than ticketing (moto, reaper, notifier, stats)."""
        return {name: proc.pid for name, proc in self.stack.procs.items() if name != "ticketing"}

    def dead(self) -> list[str]:
        return [name for name, proc in self.stack.procs.items() if not proc.alive()]


def _bench_services(ticketing_env: Mapping[str, str]) -> list[devstack.DevService]:
    """``devstack.SERVICES`` as they are, but ticketing without the join limit per client address
    (and with ``ticketing_env`` on top)."""
    extra = {"WAITROOM_TICKETING_JOIN_RATE_PER_IP": "0", **ticketing_env}

    def no_join_limit(service: devstack.DevService) -> devstack.DevService:
        base = service.env
        return dataclasses.replace(service, env=lambda ctx: {**base(ctx), **extra})

    return [no_join_limit(s) if s.name == "ticketing" else s for s in devstack.SERVICES]


@contextlib.contextmanager
def dev_stack(
    work_dir: Path, partitions: int, bootstrap: str | None = None, ticketing_env: Mapping[str, str] | None = None
) -> Iterator[RunningStack]:
    """The dev command's stack in ``work_dir``: its broker (or ``bootstrap``), topics under a fresh prefix."""
    with contextlib.ExitStack() as exits:
        if bootstrap is None:
            broker = exits.enter_context(broker_for_bench(work_dir))
        else:
            broker = Broker(bootstrap, f"the cluster at {bootstrap}", None)
        prefix = f"stack{uuid4().hex[:8]}"
        registry = topic_registry(prefix, partitions)
        asyncio.run(ensure_topics(broker.bootstrap, registry.all()))
        data_dir = work_dir / "dev"
        devstack.ensure_signing_key(data_dir / "jwt-keys")
        api_port, admin_port = free_ports(2)
        ctx = devstack.DevContext(data_dir, broker.bootstrap, prefix, partitions, api_port, admin_port)
        ctx.otel_env = devstack.telemetry_env(None)
        stack = devstack.Stack(ctx, _bench_services(ticketing_env or {}))
        say(f"starting the dev stack (topics under {prefix}) ...")
        try:
            with contextlib.redirect_stdout(sys.stderr):  # the dev command's lines are progress here
                stack.start()
            yield RunningStack(
                f"http://127.0.0.1:{api_port}", devstack.admin_url(ctx), registry, broker.bootstrap, broker, stack
            )
        finally:
            with contextlib.redirect_stdout(sys.stderr):
                stack.stop()
