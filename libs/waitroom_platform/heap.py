"""Keep the cyclic collector from rescanning a large, long-lived heap (``gc.freeze``).

A sequencer holds every ticket of its rooms, and an all-in-one ticketing process holds them twice
(the read model too): millions of objects that live as long as the process. CPython's full
collection scans every tracked object, so once such a heap has been built each full collection
held the event loop (and with it the consumer group's heartbeats) for seconds: 1.7 s for the
1 M tickets of a 3 M-event room on a loaded 2-core machine, measured; two copies of it outlast
what a 3 s session tolerates (docs/adr/0007), and the member was expelled in the middle of its
takeover, again and again.

:class:`HeapFreezer` moves the survivors of each full collection into the permanent generation,
which later collections skip: a full collection then scans what was made since the last one, not
the whole heap. Refcounting still frees frozen objects; what is lost is only the collection of a
reference cycle among objects that were alive at a freeze and died later (tickets and rooms make
none), a small and bounded cost against seconds of stalled heartbeats.
"""

from __future__ import annotations

import asyncio
import gc

import structlog

from waitroom_platform.runtime import Component

log = structlog.get_logger()

#: how often the freezer looks whether a full collection ran
CHECK_S = 0.5


def full_collections() -> int:
    return int(gc.get_stats()[2]["collections"])


def freeze_survivors() -> int:
    """Collects the young generations (so their garbage is not frozen) and freezes the rest."""
    gc.collect(1)
    gc.freeze()
    return gc.get_freeze_count()


class HeapFreezer(Component):
    name = "heap_freezer"

    def __init__(self, check_s: float = CHECK_S) -> None:
        self._check_s = check_s

    async def run(self) -> None:
        seen = full_collections()
        while True:
            await asyncio.sleep(self._check_s)
            now = full_collections()
            if now != seen:
                frozen = freeze_survivors()
                seen = full_collections()
                log.debug("heap_frozen", frozen=frozen)
