"""One room with many waiting tickets: bytes per ticket in a folded ``RoomState`` and the time of a
position query. The same structure is the sequencer's state and the API read model's.

``python -m bench.room_memory --tickets 1000000``

Ticket ids are UUID strings made inside the measurement (a decoded event's id is kept by the room),
so their bytes count; tracemalloc sees every Python allocation of the fold.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
import uuid

from waitroom_core.room import RoomState, evolve
from waitroom_events.events import RoomConfigured, TicketIssued


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.room_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=20_000)
    args = parser.parse_args(argv)
    rng = random.Random(3)  # noqa: S311 - a workload, not a secret
    gc.collect()
    tracemalloc.start()
    room = RoomState("r")
    configured = RoomConfigured(
        room_id="r",
        at=1.0,
        capacity=0,
        heartbeat_timeout_s=20.0,
        heartbeat_interval_s=5.0,
        target_url=None,
        paused=False,
    )
    evolve(room, configured)
    before = tracemalloc.get_traced_memory()[0]
    ids = []
    for i in range(args.tickets):
        ticket_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        evolve(room, TicketIssued(room_id="r", ticket_id=ticket_id, queue_no=i + 1, at=2.0 + i))
        if i % 997 == 0:
            ids.append(ticket_id)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_ticket = (after - before) / args.tickets
    started = time.perf_counter()
    for _ in range(args.queries):
        room.position(room.tickets[ids[rng.randrange(len(ids))]])
    per_query_us = (time.perf_counter() - started) / args.queries * 1e6
    sys.stdout.write(f"| {args.tickets:,} | {room.waiting:,} | {per_ticket:.0f} | {per_query_us:.1f} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
