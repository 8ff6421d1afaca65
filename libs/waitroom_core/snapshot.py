"""Snapshots of a partition's rooms: a versioned, compact binary encoding of :class:`RoomState`.

A snapshot names the state of every room of one partition after the commands before
``next_offset`` (of ``waitroom.commands``) were applied, and a room-events offset at or before the
first event it does not contain. Recovery folds the snapshot, then the events from that offset on
whose source command offset is at least ``next_offset`` (the others are in the snapshot already).
See docs/adr/0007-snapshots-compaction-retention.md.

Layout, all little-endian (version 1). The *body* holds the rooms::

    u32 room count, then per room:
      str room_id | u8 has_config [u32 capacity, f64 timeout, f64 interval, u8 paused, str target_url?]
      u64 last_queue_no | u64 cursor | u32 active | u32 waiting | f64 last_event_at (NaN: none)
      u32 n kept tickets, then columns of n: u64 queue_no[] | u8 state[] | f64 issued_at[] |
      f64 admitted_at[] (NaN: none) | f64 ended_at[] (NaN: none) | u32 length + utf-8 ids joined by NUL

    str = u16 length + utf-8 (u16 0xFFFF: none)

The body is zlib-compressed and cut into chunks (``CHUNK_BYTES``, under Kafka's default record
limit). A *manifest* names the snapshot: magic ``WRSM``, version, partition, snapshot id, next
command offset, events offset, taken-at (the newest event time), body length, compressed length,
CRC-32 of the compressed bytes, chunk count, room count. A *chunk* is magic ``WRSC``, version,
snapshot id, index, then its bytes. Anything that does not check out raises
:class:`SnapshotError`, and the caller falls back to the log.

Ended tickets are *compacted out*: a ticket that left or expired more than ``keep_ended_s`` before
its room's newest event, and whose number is below the room's admission cursor (so no scan of the
waiting line needs it), is not written. A room folded from such a snapshot answers "unknown" for
it, where a room folded from the log would answer "ended"; numbers, positions and counters are
the same.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from waitroom_core.fenwick import Fenwick
from waitroom_core.room import RoomConfig, RoomState
from waitroom_core.tickets import STATES, Columns, export_columns, restore_table

VERSION = 1
MANIFEST_MAGIC = b"WRSM"
CHUNK_MAGIC = b"WRSC"
CHUNK_BYTES = 512 * 1024

_MANIFEST = struct.Struct("<4sHIQqqdQQIII")
_CHUNK = struct.Struct("<4sHQI")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_CONFIG = struct.Struct("<IddB")
_ROOM = struct.Struct("<QQIId")
_NO_STR = 0xFFFF
_NAN = math.nan
_WAITING, _ADMITTED = 0, 1


class SnapshotError(ValueError):
    """A snapshot that cannot be trusted: truncated, corrupt, of an unknown version, incomplete."""


@dataclass(frozen=True, slots=True)
class Manifest:
    partition: int
    snapshot_id: int
    #: the first command (``waitroom.commands`` offset) the snapshot does not contain
    next_offset: int
    #: a room-events offset at or before the first event the snapshot does not contain
    events_offset: int
    #: the newest event time folded (not a clock reading)
    taken_at: float
    body_bytes: int
    compressed_bytes: int
    crc32: int
    chunks: int
    rooms: int

    def encode(self) -> bytes:
        return _MANIFEST.pack(
            MANIFEST_MAGIC,
            VERSION,
            self.partition,
            self.snapshot_id,
            self.next_offset,
            self.events_offset,
            self.taken_at,
            self.body_bytes,
            self.compressed_bytes,
            self.crc32,
            self.chunks,
            self.rooms,
        )

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        if len(data) != _MANIFEST.size:
            raise SnapshotError(f"manifest of {len(data)} bytes, expected {_MANIFEST.size}")
        magic, version, *fields = _MANIFEST.unpack(data)
        if magic != MANIFEST_MAGIC:
            raise SnapshotError("not a snapshot manifest")
        if version != VERSION:
            raise SnapshotError(f"snapshot version {version} is not supported (this code reads {VERSION})")
        return cls(*fields)


@dataclass(frozen=True, slots=True)
class Framed:
    manifest: Manifest
    chunks: list[bytes]


# --------------------------------------------------------------------------------------------
# encoding


def encode_rooms(rooms: Iterable[RoomState], keep_ended_s: float | None = None) -> tuple[bytes, int]:
    """The body of a snapshot of ``rooms`` and how many rooms it holds (rooms not created are left out).

    Runs where the rooms are consistent (between two of the sequencer's transactions); it is the
    only part of writing a snapshot that must: compressing and sending work on its result.
    """
    parts: list[bytes] = []
    count = 0
    for room in rooms:
        if room.config is None:
            continue
        parts.append(_encode_room(room, keep_ended_s))
        count += 1
    return _U32.pack(count) + b"".join(parts), count


def _encode_room(room: RoomState, keep_ended_s: float | None) -> bytes:
    config = room.config
    assert config is not None
    out = [
        _str(room.room_id),
        b"\x01",
        _CONFIG.pack(config.capacity, config.heartbeat_timeout_s, config.heartbeat_interval_s, config.paused),
        _str(config.target_url),
        _ROOM.pack(
            room.last_queue_no,
            room._cursor,
            room.active,
            room.waiting,
            _NAN if room.last_event_at is None else room.last_event_at,
        ),
    ]
    # Straight from the room's columns (waitroom_core.tickets): no Ticket object per ticket.
    cutoff = None if keep_ended_s is None or room.last_event_at is None else room.last_event_at - keep_ended_s
    columns = export_columns(room.tickets, cutoff, room._cursor)
    if columns.ids.count(0) != max(0, len(columns.queue_nos) - 1):
        raise ValueError("a ticket id of a snapshot may not hold a NUL character")
    queue_nos, states, ids = columns.queue_nos, columns.codes, columns.ids
    issued, admitted, ended = columns.issued, columns.admitted, columns.ended
    _little(queue_nos, issued, admitted, ended)
    out += [
        _U32.pack(len(queue_nos)),
        queue_nos.tobytes(),
        states,
        issued.tobytes(),
        admitted.tobytes(),
        ended.tobytes(),
        _U32.pack(len(ids)),
        ids,
    ]
    return b"".join(out)


def frame(
    body: bytes,
    *,
    rooms: int,
    partition: int,
    snapshot_id: int,
    next_offset: int,
    events_offset: int,
    taken_at: float,
    chunk_bytes: int = CHUNK_BYTES,
    level: int = 1,
) -> Framed:
    """Compress ``body`` and cut it into chunk records, with the manifest that names them.

    CPU-bound but pure: zlib releases the GIL, so the sequencer runs this in a worker thread.
    """
    compressed = zlib.compress(body, level)
    pieces = [compressed[i : i + chunk_bytes] for i in range(0, len(compressed), chunk_bytes)] or [b""]
    manifest = Manifest(
        partition=partition,
        snapshot_id=snapshot_id,
        next_offset=next_offset,
        events_offset=events_offset,
        taken_at=taken_at,
        body_bytes=len(body),
        compressed_bytes=len(compressed),
        crc32=zlib.crc32(compressed),
        chunks=len(pieces),
        rooms=rooms,
    )
    chunks = [_CHUNK.pack(CHUNK_MAGIC, VERSION, snapshot_id, i) + piece for i, piece in enumerate(pieces)]
    return Framed(manifest, chunks)


# --------------------------------------------------------------------------------------------
# decoding


def unframe(manifest: Manifest, chunks: dict[int, bytes]) -> bytes:
    """The body named by ``manifest`` from its chunk records (by index); checks every one."""
    pieces = []
    for index in range(manifest.chunks):
        data = chunks.get(index)
        if data is None:
            raise SnapshotError(f"chunk {index} of snapshot {manifest.snapshot_id} is missing")
        if len(data) < _CHUNK.size:
            raise SnapshotError(f"chunk {index} is truncated")
        magic, version, snapshot_id, at = _CHUNK.unpack_from(data)
        if magic != CHUNK_MAGIC or version != VERSION or snapshot_id != manifest.snapshot_id or at != index:
            raise SnapshotError(f"chunk {index} belongs to another snapshot (id {snapshot_id}, index {at})")
        pieces.append(data[_CHUNK.size :])
    compressed = b"".join(pieces)
    if len(compressed) != manifest.compressed_bytes or zlib.crc32(compressed) != manifest.crc32:
        raise SnapshotError(f"snapshot {manifest.snapshot_id} fails its checksum")
    try:
        body = zlib.decompress(compressed)
    except zlib.error as exc:
        raise SnapshotError(f"snapshot {manifest.snapshot_id} does not decompress: {exc}") from None
    if len(body) != manifest.body_bytes:
        raise SnapshotError(
            f"snapshot {manifest.snapshot_id} has {len(body)} body bytes, expected {manifest.body_bytes}"
        )
    return body


def decode_rooms(body: bytes) -> dict[str, RoomState]:
    """The rooms of a snapshot body, as rooms folded from the log would be (see the module doc)."""
    reader = _Reader(body)
    try:
        count = reader.unpack(_U32)[0]
        rooms: dict[str, RoomState] = {}
        for _ in range(count):
            room = _decode_room(reader)
            rooms[room.room_id] = room
    except (struct.error, UnicodeDecodeError, IndexError, KeyError, ValueError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"snapshot body does not decode: {exc}") from None
    if reader.pos != len(body):
        raise SnapshotError(f"{len(body) - reader.pos} bytes after the last room")
    return rooms


def _decode_room(reader: _Reader) -> RoomState:
    room_id = reader.text()
    if room_id is None:
        raise SnapshotError("a room without an id")
    room = RoomState(room_id)
    if reader.take(1) != b"\x01":
        raise SnapshotError(f"room {room_id!r} has no configuration")
    capacity, timeout, interval, paused = reader.unpack(_CONFIG)
    room.config = RoomConfig(capacity, timeout, interval, reader.text(), bool(paused))
    last_queue_no, cursor, active, waiting, last_event_at = reader.unpack(_ROOM)
    n = reader.unpack(_U32)[0]
    queue_nos = reader.array("Q", n)
    codes = reader.take(n)
    issued = reader.array("d", n)
    admitted = reader.array("d", n)
    ended = reader.array("d", n)
    raw_ids = reader.take(reader.unpack(_U32)[0])
    if max(codes, default=0) >= len(STATES):
        raise SnapshotError(f"room {room_id!r}: its ticket columns do not match")
    # Whole-column checks instead of per-ticket ones: decoding is on the failover's critical path.
    if n and (min(queue_nos) < 1 or max(queue_nos) > last_queue_no or len(set(queue_nos)) != n):
        raise SnapshotError(f"room {room_id!r}: ticket numbers out of place")
    waiting_nos = [q for q, code in zip(queue_nos, codes, strict=True) if code == _WAITING]
    if (codes.count(_ADMITTED), len(waiting_nos)) != (active, waiting) or cursor > last_queue_no:
        raise SnapshotError(f"room {room_id!r}: counters do not match its tickets")
    if waiting_nos and min(waiting_nos) <= cursor:
        raise SnapshotError(f"room {room_id!r}: a waiting ticket behind the cursor")
    if sum(1 for q in queue_nos if q > cursor) != last_queue_no - cursor:
        raise SnapshotError(f"room {room_id!r}: a ticket after the cursor is missing")
    try:
        table = restore_table(Columns(queue_nos, codes, issued, admitted, ended, raw_ids), last_queue_no)
    except ValueError as exc:
        raise SnapshotError(f"room {room_id!r}: {exc}") from None
    room.last_queue_no = last_queue_no
    room._cursor = cursor
    room.active = active
    room.waiting = waiting
    room.last_event_at = _none_if_nan(last_event_at)
    room.tickets = table
    room._waiting_index = Fenwick.from_counts(table.waiting_counts())
    room._fenwick_base = table.base
    return room


# --------------------------------------------------------------------------------------------
# helpers


def _str(value: str | None) -> bytes:
    if value is None:
        return _U16.pack(_NO_STR)
    raw = value.encode()
    if len(raw) >= _NO_STR:
        raise ValueError("a string of a snapshot is at most 65534 bytes")
    return _U16.pack(len(raw)) + raw


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def _little(*arrays: array[int] | array[float]) -> None:
    if sys.byteorder == "big":  # the format is little-endian on every machine
        for column in arrays:
            column.byteswap()


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise SnapshotError("snapshot body is truncated")
        chunk = bytes(self.data[self.pos : end])
        self.pos = end
        return chunk

    def unpack(self, shape: struct.Struct) -> tuple[Any, ...]:
        return shape.unpack(self.take(shape.size))

    def text(self) -> str | None:
        n = self.unpack(_U16)[0]
        return None if n == _NO_STR else self.take(n).decode()

    def array(self, code: str, n: int) -> array[Any]:
        column: array[Any] = array(code)
        column.frombytes(self.take(column.itemsize * n))
        _little(column)
        return column
