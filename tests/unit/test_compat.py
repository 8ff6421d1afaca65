"""The private parts of aiokafka and faust that waitroom relies on are still there, and still used.

These run against the installed libraries, without a broker (consumers are built, never started),
so an upgrade that renames or stops reading any of them fails here, naming it, rather than in
production as a stats service that silently reads uncommitted records.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator

import faust
import faust.transport.consumer
import pytest
from aiokafka import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from waitroom_platform import compat
from waitroom_platform.settings import KafkaSettings
from waitroom_stats.app import Stats
from waitroom_stats.settings import StatsSettings
from waitroom_stats.transport import FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES, CommittedReadTransport

UNREACHABLE = "127.0.0.1:1"

#: the private faust hooks waitroom_stats overrides, and the faust code that has to call each one
FAUST_HOOKS = [
    (faust.App, "_new_transport", faust.App.transport.fget),  # type: ignore[attr-defined]
    (faust_aiokafka.Consumer, "_new_consumer_thread", faust_aiokafka.Consumer.__init__),
    (
        faust_aiokafka.AIOKafkaConsumerThread,
        "_create_worker_consumer",
        faust_aiokafka.AIOKafkaConsumerThread._create_consumer,
    ),
    # the offset to commit, and the bookkeeping it reads (_acked, _acked_index, _unacked_messages)
    (faust_aiokafka.Consumer, "_new_offset", faust_aiokafka.Consumer._filter_committable_offsets),
    # faust's record of the holes between fetched offsets, which that rule does not read
    (faust_aiokafka.Consumer, "_add_gap", faust.transport.consumer.Consumer._drain_messages),
]


@pytest.fixture
async def consumer() -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=UNREACHABLE, isolation_level="read_committed", fetch_max_wait_ms=123, fetch_min_bytes=456
    )
    yield consumer
    await consumer.stop()


async def test_an_unstarted_aiokafka_consumer_has_every_attribute_compat_reads_or_sets(
    consumer: AIOKafkaConsumer,
) -> None:
    for name in (compat.CLIENT, compat.FETCHER, *compat.FETCH_SETTINGS):
        assert hasattr(consumer, name), f"aiokafka's AIOKafkaConsumer has no {name!r} any more: review compat"
    assert consumer._isolation_level == "read_committed", "_isolation_level no longer holds the constructor's setting"
    assert consumer._fetch_max_wait_ms == 123, "_fetch_max_wait_ms no longer holds the constructor's setting"
    assert consumer._fetch_min_bytes == 456, "_fetch_min_bytes no longer holds the constructor's setting"
    assert getattr(consumer, compat.FETCHER) is None, "_fetcher is no longer None before start()"

    client = compat.cluster_client(consumer)
    for method in ("add_topic", "force_metadata_update"):
        assert callable(getattr(client, method, None)), f"aiokafka's cluster client has no {method}() any more"


def test_aiokafka_start_still_builds_the_fetcher_from_the_attributes_compat_overrides() -> None:
    start = inspect.getsource(AIOKafkaConsumer.start)

    for name in (*compat.FETCH_SETTINGS, compat.FETCHER):
        assert f"self.{name}" in start, f"AIOKafkaConsumer.start() no longer reads {name!r}: review compat"


async def test_override_fetch_settings_changes_an_unstarted_consumer_and_refuses_a_started_one(
    consumer: AIOKafkaConsumer,
) -> None:
    compat.override_fetch_settings(consumer, isolation_level="read_uncommitted", fetch_max_wait_ms=7, fetch_min_bytes=9)

    assert (consumer._isolation_level, consumer._fetch_max_wait_ms, consumer._fetch_min_bytes) == (
        "read_uncommitted",
        7,
        9,
    )
    consumer._fetcher = object()  # what start() leaves there
    with pytest.raises(RuntimeError, match="started"):
        compat.override_fetch_settings(
            consumer, isolation_level="read_committed", fetch_max_wait_ms=7, fetch_min_bytes=9
        )
    consumer._fetcher = None


def test_a_missing_private_attribute_is_named_in_the_error() -> None:
    with pytest.raises(compat.IncompatibleLibrary, match="'_client'"):
        compat.cluster_client(object())


@pytest.mark.parametrize(("owner", "hook", "caller"), FAUST_HOOKS, ids=[hook for _, hook, _ in FAUST_HOOKS])
def test_faust_still_has_and_calls_each_hook_the_stats_service_overrides(
    owner: type, hook: str, caller: object
) -> None:
    assert callable(getattr(owner, hook, None)), f"faust's {owner.__qualname__} has no {hook}() any more"
    assert f".{hook}(" in inspect.getsource(caller), f"faust no longer calls {owner.__qualname__}.{hook}()"  # type: ignore[arg-type]


async def test_the_consumer_faust_builds_for_the_stats_worker_reads_committed_records() -> None:
    stats = Stats(StatsSettings(kafka=KafkaSettings(bootstrap_servers=UNREACHABLE)))

    assert isinstance(stats.app.transport, CommittedReadTransport)
    consumer = stats.app.consumer._thread._create_consumer(loop=stats.app.loop)
    try:
        assert consumer._isolation_level == "read_committed"
        assert consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS
        assert consumer._fetch_min_bytes == FETCH_MIN_BYTES
    finally:
        await consumer.stop()


def test_aiokafka_still_retries_concurrent_transactions_after_the_module_constant_compat_shortens() -> None:
    module, name = compat.TRANSACTION_RETRY
    before = getattr(module, name)
    assert isinstance(before, float), f"aiokafka.producer.sender.{name} is gone or no longer a delay: review compat"
    handler = inspect.getsource(module.AddPartitionsToTxnHandler.handle_response)
    assert "ConcurrentTransactions" in handler and name in handler, (
        "AddPartitionsToTxnHandler no longer waits BACKOFF_OVERRIDE after ConcurrentTransactions: review compat"
    )
    try:
        compat.shorten_transaction_retry(0.004)
        assert getattr(module, name) == 0.004
    finally:
        setattr(module, name, before)


def test_faust_consumer_still_keeps_the_bookkeeping_the_stats_commit_rule_reads() -> None:
    init = inspect.getsource(faust.transport.consumer.Consumer.__init__)
    for name in ("_acked", "_acked_index", "_unacked_messages", "_committed_offset"):
        assert f"self.{name} =" in init, f"faust's Consumer no longer sets {name}: review waitroom_stats.transport"
