"""The heap freezer: the survivors of a full collection go to the permanent generation."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest
from support.waiting import eventually

from waitroom_platform.heap import HeapFreezer


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test session collects as usual


def scanned(obj: object) -> bool:
    """Whether a full collection would look at ``obj`` (the permanent generation is not scanned)."""
    return any(o is obj for o in gc.get_objects(generation=2))


async def test_after_a_full_collection_its_survivors_are_frozen_and_no_longer_scanned(unfrozen: None) -> None:
    freezer = HeapFreezer(check_s=0.01)
    run = asyncio.create_task(freezer.run())
    try:
        await asyncio.sleep(0.02)
        long_lived = [[n] for n in range(1000)]
        gc.collect()
        assert scanned(long_lived)

        await eventually(lambda: gc.get_freeze_count() > 0, timeout=5)
        assert not scanned(long_lived)
        assert long_lived[999] == [999]  # frozen, not gone
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


class Node:
    me: Node | None = None


async def test_young_garbage_is_collected_before_a_freeze_not_frozen(unfrozen: None) -> None:
    freezer = HeapFreezer(check_s=0.01)
    run = asyncio.create_task(freezer.run())
    try:
        await asyncio.sleep(0.02)
        gc.collect()  # the full collection the freezer will see; nothing awaits until the cycle is garbage
        node = Node()
        node.me = node  # a cycle: only the collector can free it
        gone = weakref.ref(node)
        del node

        await eventually(lambda: gc.get_freeze_count() > 0, timeout=5)
        assert gone() is None
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
