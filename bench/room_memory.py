"""One room with many waiting tickets: bytes per ticket in a folded ``RoomState``, the time of a
position query, the fold's rate, and the memory of the same room once most of its tickets ended
and were forgotten. The same structure is the sequencer's state and the API read model's.

``python -m bench.room_memory --tickets 1000000 [--write-docs]``

Ticket ids are UUID strings made inside the measurement (as decoded events carry them), so any
bytes the room keeps of them count; tracemalloc sees every Python allocation of the fold.
``--write-docs`` puts the rows into docs/benchmarks.md between the room-memory markers.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

from waitroom_core.room import RoomState, evolve, forget_ended
from waitroom_events.events import RoomConfigured, TicketAdmitted, TicketIssued, TicketLeft

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- room-memory:begin -->", "<!-- room-memory:end -->"


def _room(capacity: int, keep_ended_s: float | None = None) -> RoomState:
    room = RoomState("r", keep_ended_s)
    evolve(
        room,
        RoomConfigured(
            room_id="r",
            at=1.0,
            capacity=capacity,
            heartbeat_timeout_s=20.0,
            heartbeat_interval_s=5.0,
            target_url=None,
            paused=False,
        ),
    )
    return room


def _ids(n: int, rng: random.Random) -> list[str]:
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def waiting(n: int, queries: int, rng: random.Random) -> dict[str, float]:
    """A room with ``n`` waiting tickets (capacity 0): bytes per ticket, query and fold times."""
    ids = _ids(n, rng)
    events = [TicketIssued(room_id="r", ticket_id=t, queue_no=i + 1, at=2.0 + i) for i, t in enumerate(ids)]
    gc.collect()
    tracemalloc.start()
    room = _room(0)
    before = tracemalloc.get_traced_memory()[0]
    for event in events:
        evolve(room, event)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    timed = _room(0)
    started = time.perf_counter()
    for event in events:
        evolve(timed, event)
    fold_s = time.perf_counter() - started
    del timed
    picks = [ids[rng.randrange(n)] for _ in range(queries)]
    started = time.perf_counter()
    for ticket_id in picks:
        ticket = room.tickets[ticket_id]
        room.position(ticket)
    query_us = (time.perf_counter() - started) / queries * 1e6
    return {
        "tickets": n,
        "waiting": room.waiting,
        "bytes_per_ticket": (after - before) / n,
        "query_us": query_us,
        "evolve_per_s": n / fold_s,
    }


def mostly_ended(n: int, live: int, keep_ended_s: float, rng: random.Random) -> dict[str, float]:
    """``n`` tickets through a room (capacity ``live``): each admitted one leaves one second after
    it came in, the last ``live`` are still in; the room forgets ended tickets after ``keep_ended_s``."""
    ids = _ids(n, rng)
    gc.collect()
    tracemalloc.start()
    room = _room(live, keep_ended_s)
    before = tracemalloc.get_traced_memory()[0]
    at = 2.0
    for i, ticket_id in enumerate(ids):
        at += 0.001
        evolve(room, TicketIssued(room_id="r", ticket_id=ticket_id, queue_no=i + 1, at=at))
        evolve(room, TicketAdmitted(room_id="r", ticket_id=ticket_id, queue_no=i + 1, at=at))
        if i >= live:
            gone = ids[i - live]
            evolve(room, TicketLeft(room_id="r", ticket_id=gone, queue_no=i - live + 1, at=at, was_admitted=True))
    forget_ended(room, at - keep_ended_s)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "tickets": n,
        "kept": len(room.tickets),
        "forgotten": room.tickets.forgotten_count,
        "bytes_per_ticket": (after - before) / n,
        "mb": (after - before) / 1e6,
    }


def rows(args: argparse.Namespace) -> list[str]:
    rng = random.Random(3)  # noqa: S311 - a workload, not a secret
    w = waiting(args.tickets, args.queries, rng)
    e = mostly_ended(args.tickets, args.live, args.keep_ended_s, rng)
    return [
        "| room | tickets | kept as tickets | bytes per ticket | position query | evolve |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| all waiting (capacity 0) | {w['tickets']:,} | {w['waiting']:,.0f} | {w['bytes_per_ticket']:.0f} "
        f"| {w['query_us']:.1f} µs | {w['evolve_per_s']:,.0f} events/s |",
        f"| all but {args.live:,} ended, forgotten after {args.keep_ended_s:.0f} s "
        f"| {e['tickets']:,} | {e['kept']:,.0f} (+ {e['forgotten']:,.0f} tombstones) "
        f"| {e['bytes_per_ticket']:.0f} ({e['mb']:.1f} MB in all) | | |",
    ]


def write_docs(lines: list[str], path: Path = DOCS) -> None:
    text = path.read_text()
    block = "\n".join([BEGIN, *lines, END])
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.room_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--live", type=int, default=10_000, help="tickets still in, in the mostly-ended room")
    parser.add_argument("--keep-ended-s", type=float, default=600.0)
    parser.add_argument("--write-docs", action="store_true", help="put the rows into docs/benchmarks.md")
    args = parser.parse_args(argv)
    lines = rows(args)
    sys.stdout.write("\n".join(lines) + "\n")
    if args.write_docs:
        write_docs(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
