"""The sequencer in its consumer group on a real broker: fencing, short sessions, long takeovers,
refused sessions.

A takeover fences both of a partition's transactional ids, whichever of them the new owner writes
with, so no earlier owner commits after it. A takeover (fencing, the snapshot, the replay) may
last longer than the group's session timeout; the member must stay in the group and own the
partition once, not be expelled and start over. A session timeout the cluster refuses ends the
sequencer with a message naming the setting.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from support.kafka_log import raw_records
from support.waiting import eventually

from waitroom_events.topics import TopicRegistry
from waitroom_platform.runtime import Misconfigured
from waitroom_platform.settings import KafkaSettings
from waitroom_ticketing.sequencer import FENCED_IDS, OwnedPartition, Sequencer, SequencerOptions, transactional_id

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: the shortest session the brokers waitroom starts allow (group.min.session.timeout.ms)
SESSION_MS = 1_000


class SlowRebuild(Sequencer):
    """A sequencer whose first takeover lasts ``rebuild_s`` (as a long replay would); takeovers counted."""

    def __init__(self, bootstrap: str, topics: TopicRegistry, session_timeout_ms: int, rebuild_s: float) -> None:
        options = SequencerOptions(
            f"{topics.commands.name}.group", transactional=False, session_timeout_ms=session_timeout_ms
        )
        super().__init__(KafkaSettings(bootstrap_servers=bootstrap), topics, options)
        self.rebuild_s = rebuild_s
        self.takeovers: list[int] = []

    async def _rebuild(self, owned: OwnedPartition) -> None:
        self.takeovers.append(owned.partition)
        if len(self.takeovers) == 1:
            await asyncio.sleep(self.rebuild_s)


async def test_a_takeover_longer_than_the_session_timeout_owns_its_partitions_once(
    kafka_bootstrap: str, topics: TopicRegistry
) -> None:
    sequencer = SlowRebuild(kafka_bootstrap, topics, SESSION_MS, rebuild_s=2.5 * SESSION_MS / 1000)
    await sequencer.start()
    run = asyncio.create_task(sequencer.run())
    try:
        await eventually(lambda: sequencer.ready() or run.done(), timeout=30)
        if run.done() and isinstance(run.exception(), Misconfigured):
            pytest.skip(f"this cluster does not allow a {SESSION_MS} ms session: {run.exception()}")
        await asyncio.sleep(3 * SESSION_MS / 1000)  # expelled members would have started over by now

        partitions = topics.commands.partitions
        assert sorted(sequencer.takeovers) == list(range(partitions))  # each once
        assert sorted(sequencer._owned) == list(range(partitions))
        assert sequencer._consumer is not None
        assert sequencer._consumer.paused() == set()
        assert not run.done()
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await sequencer.stop()


async def test_a_session_timeout_below_the_clusters_floor_ends_the_sequencer_naming_the_setting(
    kafka_bootstrap: str, topics: TopicRegistry
) -> None:
    sequencer = SlowRebuild(kafka_bootstrap, topics, SESSION_MS // 2, rebuild_s=0)
    await sequencer.start()
    try:
        with pytest.raises(Misconfigured, match="WAITROOM_TICKETING_SESSION_TIMEOUT_MS"):
            await asyncio.wait_for(sequencer.run(), timeout=30)
        assert sequencer.takeovers == []
    finally:
        await sequencer.stop()


@pytest.mark.parametrize("ids_used", [1, 2])
async def test_a_takeover_fences_an_earlier_owners_open_transactions_on_both_ids(
    kafka_bootstrap: str, topics: TopicRegistry, ids_used: int
) -> None:
    """An earlier owner of partition 0 (a zombie: paused, partitioned away) has a transaction open on
    each of the partition's ids. Once a new sequencer owns the partition, neither commits, and
    read_committed consumers never see their records, whether the new owner uses one id or two."""
    zombies = [
        AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, transactional_id=transactional_id(topics.commands.name, 0, index)
        )
        for index in range(FENCED_IDS)
    ]
    for index, zombie in enumerate(zombies):
        await zombie.start()
        await zombie.begin_transaction()
        await (await zombie.send(topics.room_events.name, f"zombie {index}".encode(), partition=0))
    options = SequencerOptions(f"{topics.commands.name}.group", transactional=True, transactional_ids=ids_used)
    sequencer = Sequencer(KafkaSettings(bootstrap_servers=kafka_bootstrap), topics, options)
    await sequencer.start()
    run = asyncio.create_task(sequencer.run())
    try:
        await eventually(lambda: sequencer.ready() or run.done(), timeout=60)
        assert not run.done()
        assert len(sequencer._owned[0].producers) == ids_used
        for zombie in zombies:
            with pytest.raises(KafkaError):
                await zombie.commit_transaction()
        committed = await raw_records(kafka_bootstrap, topics.room_events.name, committed_only=True)
        assert [r.value for r in committed if r.value and r.value.startswith(b"zombie")] == []
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await sequencer.stop()
        for zombie in zombies:
            await zombie.stop()
