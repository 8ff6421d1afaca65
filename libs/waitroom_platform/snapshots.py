"""The snapshots topic: write a partition's snapshot, load the newest valid one.

Records of partition ``p`` go to partition ``p`` of the compacted snapshots topic (co-partitioned
with the room topics). Each snapshot is written into one of two *slots* (by its id's parity): its
chunks under ``<p>/<slot>/<i>``, then its manifest under ``<p>/<slot>/m``. Compaction keeps the
newest record of each key, so the previous snapshot stays whole in the other slot while the next
one is being written, and a writer that dies half-way leaves a slot whose chunks do not match its
manifest, which :meth:`SnapshotStore.load` refuses (then the other slot, then the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition

from waitroom_core.room import RoomState
from waitroom_core.snapshot import Framed, Manifest, SnapshotError, decode_rooms, unframe
from waitroom_platform.consume import Record, read_to_end
from waitroom_platform.kafka import make_producer, make_reader
from waitroom_platform.settings import KafkaSettings

log = structlog.get_logger()

SLOTS = 2


@dataclass
class Loaded:
    manifest: Manifest
    rooms: dict[str, RoomState]
    #: bytes of the records read (all slots, before compaction possibly several snapshots)
    bytes_read: int
    seconds: float


@dataclass
class Found:
    """What a partition of the snapshots topic holds: the snapshot to resume from, if any is valid."""

    loaded: Loaded | None
    #: the id the next snapshot of this partition must take (above every id seen, valid or not)
    next_id: int
    refused: list[str]


def manifest_key(partition: int, slot: int) -> bytes:
    return f"{partition}/{slot}/m".encode()


def chunk_key(partition: int, slot: int, index: int) -> bytes:
    return f"{partition}/{slot}/{index}".encode()


class SnapshotStore:
    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self._kafka = kafka
        self.topic = topic
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is None:
            # Not the partition's transactional producer: a snapshot must never hold up a
            # transaction of commands. Chunks are at most ~512 KB, one per request.
            self._producer = make_producer(self._kafka, linger_ms=5, max_request_size=2 * 1024 * 1024)
            await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def write(self, framed: Framed) -> None:
        """Chunks first, the manifest once every chunk is acknowledged."""
        await self.start()
        assert self._producer is not None
        manifest = framed.manifest
        partition, slot = manifest.partition, manifest.snapshot_id % SLOTS
        deliveries = [
            await self._producer.send(self.topic, chunk, key=chunk_key(partition, slot, i), partition=partition)
            for i, chunk in enumerate(framed.chunks)
        ]
        await asyncio.gather(*deliveries)
        await (
            await self._producer.send(
                self.topic, manifest.encode(), key=manifest_key(partition, slot), partition=partition
            )
        )

    async def load(self, partition: int) -> Found:
        """The newest snapshot of ``partition`` that checks out, and the id its next one takes."""
        started = time.monotonic()
        latest: dict[bytes, bytes] = {}
        size = 0

        def keep(record: Record) -> None:
            nonlocal size
            if record.key is None:
                return
            if record.value is None:
                latest.pop(record.key, None)  # a tombstone
                return
            size += len(record.value)
            latest[record.key] = record.value

        reader = make_reader(self._kafka)
        await reader.start()
        try:
            await read_to_end(reader, TopicPartition(self.topic, partition), keep, max_records=500)
        finally:
            await reader.stop()
        # In a worker thread: decoding a million tickets takes seconds (docs/benchmarks.md), and
        # in the event loop it would hold up the group's heartbeats for as long (a sequencer with
        # a 3 s session would be expelled from its group in the middle of a takeover).
        return await asyncio.to_thread(self._pick, partition, latest, size, started)

    @staticmethod
    def _pick(partition: int, latest: dict[bytes, bytes], size: int, started: float) -> Found:
        manifests: list[Manifest] = []
        refused: list[str] = []
        for slot in range(SLOTS):
            raw = latest.get(manifest_key(partition, slot))
            if raw is None:
                continue
            try:
                manifest = Manifest.decode(raw)
            except SnapshotError as exc:
                refused.append(f"slot {slot}: {exc}")
                continue
            if manifest.partition != partition or manifest.snapshot_id % SLOTS != slot:
                refused.append(f"slot {slot}: manifest of partition {manifest.partition}, id {manifest.snapshot_id}")
                continue
            manifests.append(manifest)
        next_id = max((m.snapshot_id for m in manifests), default=-1) + 1
        for manifest in sorted(manifests, key=lambda m: m.snapshot_id, reverse=True):
            slot = manifest.snapshot_id % SLOTS
            chunks = {
                i: data
                for i in range(manifest.chunks)
                if (data := latest.get(chunk_key(partition, slot, i))) is not None
            }
            try:
                with collector_paused():
                    rooms = decode_rooms(unframe(manifest, chunks))
            except SnapshotError as exc:
                refused.append(f"snapshot {manifest.snapshot_id}: {exc}")
                continue
            return Found(Loaded(manifest, rooms, size, time.monotonic() - started), next_id, refused)
        return Found(None, next_id, refused)


_collector_lock = threading.Lock()
_collector_pauses = 0
_collector_was_enabled = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Decoding makes a million objects that all live on: the cyclic collector would scan them
    again and again while they are made, for nothing (it doubled the decode time, measured).

    The collector is the process's: decodes in several threads at once (the read model and the
    sequencer of one process) share one pause, and the last to end restores it.
    """
    global _collector_pauses, _collector_was_enabled
    with _collector_lock:
        if _collector_pauses == 0:
            _collector_was_enabled = gc.isenabled()
            gc.disable()
        _collector_pauses += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_pauses -= 1
            if _collector_pauses == 0 and _collector_was_enabled:
                gc.enable()


def describe(found: Found) -> dict[str, Any]:
    """The log fields of a load: which snapshot, or why none."""
    if found.loaded is None:
        return {"snapshot": None, "refused": found.refused or None}
    manifest = found.loaded.manifest
    return {
        "snapshot": manifest.snapshot_id,
        "snapshot_rooms": manifest.rooms,
        "snapshot_bytes": manifest.compressed_bytes,
        "snapshot_read_bytes": found.loaded.bytes_read,
        "snapshot_load_s": round(found.loaded.seconds, 3),
        "refused": found.refused or None,
    }
