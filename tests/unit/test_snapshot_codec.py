"""The snapshot encoding: a room folded from a snapshot is the room folded from the log.

A fixed history is encoded and compared byte for byte with the golden files
``tests/unit/golden/snapshots/v1.*`` (the manifest and the chunks of version 1): an old snapshot
must always decode, so a change of layout is a new version, never an edit. To write the golden
files of a new version, run once with ``WAITROOM_UPDATE_GOLDEN=1`` and review them.
"""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waitroom_core.room import RoomState, decide, evolve
from waitroom_core.snapshot import (
    Manifest,
    SnapshotError,
    decode_rooms,
    encode_rooms,
    frame,
    unframe,
)
from waitroom_events.commands import (
    AdmitRequested,
    Command,
    ExpireRequested,
    JoinRequested,
    LeaveRequested,
    RoomConfigureRequested,
)
from waitroom_events.events import RoomEvent

GOLDEN = Path(__file__).parent / "golden" / "snapshots"
UPDATE_GOLDEN = os.environ.get("WAITROOM_UPDATE_GOLDEN") == "1"


def history(seed: int, steps: int, room_id: str = "r1") -> tuple[RoomState, list[RoomEvent]]:
    """A valid history made by the core's decide: joins, leaves, expiries, admits, reconfigurations."""
    rng = random.Random(seed)
    state = RoomState(room_id)
    events: list[RoomEvent] = []
    now = 1_700_000_000.0
    issued: list[str] = []

    def run(command: Command) -> None:
        for event in decide(state, command, now):
            evolve(state, event)
            events.append(event)

    run(RoomConfigureRequested(room_id=room_id, requested_at=now, capacity=3, target_url="https://shop.example/"))
    for step in range(steps):
        now += 1.0
        roll = rng.random()
        if roll < 0.5 or not issued:
            ticket_id = f"t-{seed}-{step}"
            issued.append(ticket_id)
            run(JoinRequested(room_id=room_id, ticket_id=ticket_id, requested_at=now))
        elif roll < 0.7:
            run(LeaveRequested(room_id=room_id, ticket_id=rng.choice(issued), requested_at=now))
        elif roll < 0.85:
            run(ExpireRequested(room_id=room_id, ticket_id=rng.choice(issued), requested_at=now, last_heartbeat_at=now))
        elif roll < 0.9:
            run(AdmitRequested(room_id=room_id, requested_at=now, count=2, above_capacity=rng.random() < 0.5))
        else:
            run(
                RoomConfigureRequested(
                    room_id=room_id, requested_at=now, capacity=rng.randrange(0, 6), paused=rng.random() < 0.2
                )
            )
    return state, events


def observable(room: RoomState) -> dict[str, object]:
    """What any reader of a room can see: counters, configuration, every ticket and its position."""
    return {
        "config": room.config,
        "last_queue_no": room.last_queue_no,
        "active": room.active,
        "waiting": room.waiting,
        "last_event_at": room.last_event_at,
        "tickets": {
            t.ticket_id: (t.queue_no, t.state, t.issued_at, t.admitted_at, t.ended_at, room.position(t))
            for t in room.tickets.values()
        },
        "waiting_in_order": [t.ticket_id for t in room.waiting_in_order()],
    }


def round_trip(
    rooms: list[RoomState], keep_ended_s: float | None = None, chunk_bytes: int = 64
) -> dict[str, RoomState]:
    body, count = encode_rooms(rooms, keep_ended_s)
    framed = frame(
        body,
        rooms=count,
        partition=3,
        snapshot_id=7,
        next_offset=11,
        events_offset=5,
        taken_at=1.5,
        chunk_bytes=chunk_bytes,
    )
    manifest = Manifest.decode(framed.manifest.encode())
    return decode_rooms(unframe(manifest, dict(enumerate(framed.chunks))))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(0, 120))
def test_a_room_from_its_snapshot_is_the_room_from_its_log(seed: int, steps: int) -> None:
    state, _ = history(seed, steps)
    restored = round_trip([state])[state.room_id]
    assert observable(restored) == observable(state)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), split=st.integers(0, 200))
def test_a_snapshot_then_the_rest_of_the_log_decides_like_the_whole_log(seed: int, split: int) -> None:
    """Compacted or not, the restored room goes on exactly as the original: same events for the same commands."""
    _, events = history(seed, 200)
    split = min(split, len(events))
    before = RoomState("r1")
    for event in events[:split]:
        evolve(before, event)
    restored = round_trip([before], keep_ended_s=5.0).get("r1", RoomState("r1"))
    full = RoomState("r1")
    for event in events[:split]:
        evolve(full, event)
    for event in events[split:]:
        evolve(restored, event)
        evolve(full, event)
    assert restored.last_queue_no == full.last_queue_no
    assert (restored.active, restored.waiting) == (full.active, full.waiting)
    assert [t.ticket_id for t in restored.waiting_in_order()] == [t.ticket_id for t in full.waiting_in_order()]
    for ticket in full.tickets.values():
        kept = restored.tickets.get(ticket.ticket_id)
        if ticket.state.live:
            assert kept is not None and restored.position(kept) == full.position(ticket)
    now = 1_800_000_000.0
    for command in (
        JoinRequested(room_id="r1", ticket_id="late", requested_at=now),
        AdmitRequested(room_id="r1", requested_at=now, count=3),
        RoomConfigureRequested(room_id="r1", requested_at=now, capacity=9),
    ):
        assert decide(restored, command, now) == decide(full, command, now)
        for event in decide(full, command, now):
            evolve(full, event)
            evolve(restored, event)


def test_compaction_leaves_out_tickets_ended_long_before_the_rooms_last_event_and_only_those() -> None:
    state, _ = history(1, 400)
    assert state.last_event_at is not None
    restored = round_trip([state], keep_ended_s=50.0)["r1"]
    dropped = set(state.tickets) - set(restored.tickets)
    assert dropped, "the history has tickets ended long ago"
    for ticket_id in dropped:
        ticket = state.tickets[ticket_id]
        assert not ticket.state.live and ticket.ended_at is not None
        assert ticket.ended_at < state.last_event_at - 50.0
    for ticket in state.tickets.values():
        if ticket.state.live:
            assert restored.tickets[ticket.ticket_id] == ticket


def test_rooms_not_created_are_not_in_a_snapshot() -> None:
    state, _ = history(2, 10)
    assert set(round_trip([RoomState("never-configured"), state])) == {"r1"}


def test_an_empty_partition_has_a_snapshot_too() -> None:
    assert round_trip([]) == {}


def corrupt_cases() -> list[tuple[str, object]]:
    return ["flipped byte", "missing chunk", "foreign chunk", "truncated body", "wrong version"]


@pytest.mark.parametrize("damage", corrupt_cases())
def test_a_damaged_snapshot_is_refused_never_misread(damage: str) -> None:
    state, _ = history(3, 100)
    body, count = encode_rooms([state])
    framed = frame(
        body, rooms=count, partition=0, snapshot_id=4, next_offset=1, events_offset=0, taken_at=0.0, chunk_bytes=200
    )
    chunks = dict(enumerate(framed.chunks))
    manifest_bytes = framed.manifest.encode()
    if damage == "flipped byte":
        raw = bytearray(chunks[1])
        raw[-1] ^= 0xFF
        chunks[1] = bytes(raw)
    elif damage == "missing chunk":
        del chunks[len(chunks) - 1]
    elif damage == "foreign chunk":
        other = frame(
            body, rooms=count, partition=0, snapshot_id=5, next_offset=1, events_offset=0, taken_at=0.0, chunk_bytes=200
        )
        chunks[0] = other.chunks[0]
    elif damage == "truncated body":
        compressed = zlib.compress(body[:-3], 1)
        broken = frame(body[:-3], rooms=count, partition=0, snapshot_id=4, next_offset=1, events_offset=0, taken_at=0.0)
        assert len(compressed) == broken.manifest.compressed_bytes
        with pytest.raises(SnapshotError):
            decode_rooms(unframe(broken.manifest, dict(enumerate(broken.chunks))))
        return
    elif damage == "wrong version":
        manifest_bytes = manifest_bytes[:4] + (2).to_bytes(2, "little") + manifest_bytes[6:]
    with pytest.raises(SnapshotError):
        decode_rooms(unframe(Manifest.decode(manifest_bytes), chunks))


def test_version_1_is_byte_for_byte_the_golden_snapshot_and_still_decodes() -> None:
    first, _ = history(11, 60, room_id="golden-a")
    second, _ = history(12, 30, room_id="golden-b")
    body, count = encode_rooms([first, second], keep_ended_s=20.0)
    framed = frame(
        body,
        rooms=count,
        partition=2,
        snapshot_id=9,
        next_offset=321,
        events_offset=300,
        taken_at=1_700_000_060.0,
        chunk_bytes=1024,
    )
    files = {"v1.manifest.bin": framed.manifest.encode()} | {
        f"v1.chunk-{i}.bin": chunk for i, chunk in enumerate(framed.chunks)
    }
    if UPDATE_GOLDEN and not (GOLDEN / "v1.manifest.bin").exists():
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (GOLDEN / name).write_bytes(data)
    stored = {path.name: path.read_bytes() for path in sorted(GOLDEN.glob("v1.*"))}
    assert stored == files, "the v1 encoding changed: a new layout is a new version"
    manifest = Manifest.decode(stored["v1.manifest.bin"])
    chunks = {i: stored[f"v1.chunk-{i}.bin"] for i in range(manifest.chunks)}
    rooms = decode_rooms(unframe(manifest, chunks))
    assert (manifest.partition, manifest.next_offset, manifest.events_offset) == (2, 321, 300)
    assert observable(rooms["golden-b"]) == observable(round_trip([second], keep_ended_s=20.0)["golden-b"])
    assert rooms["golden-a"].last_queue_no == first.last_queue_no
