"""The embedded broker and topic admin against a real Kafka.

Tests about topics use the session broker; tests about the launcher's own life cycle (stop,
restart, a killed parent) start brokers of their own, as few as possible: one for stop and restart,
one inside a child process.
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from support.waiting import eventually_sync

from waitroom_devtools.broker import BrokerError, EmbeddedKafka
from waitroom_events.topics import TopicRegistry, topic_registry
from waitroom_platform.admin import TopicPartitionMismatch, ensure_topics, partition_counts, wait_for_broker

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="the embedded broker needs Java")
needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")


async def test_the_broker_answers_and_every_registry_topic_exists_with_its_partition_count(
    kafka_bootstrap: str, topics: TopicRegistry
) -> None:
    assert await wait_for_broker(kafka_bootstrap, timeout_s=10) >= 1

    counts = await partition_counts(kafka_bootstrap, [spec.name for spec in topics.all()])

    assert counts == {spec.name: 3 for spec in topics.all()}
    assert len(counts) == 13  # six topics, their dead-letter topics and the snapshots topic


async def test_a_record_produced_in_a_transaction_is_consumed_back_by_a_read_committed_group_member(
    kafka_bootstrap: str, topics: TopicRegistry
) -> None:
    topic = topics.commands.name
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic}.tx")
    await producer.start()
    try:
        async with producer.transaction():
            sent = await producer.send_and_wait(topic, key=b"room-1", value=b"join")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{topic}.group",
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()

    assert (record.partition, record.offset) == (sent.partition, sent.offset)
    assert (record.key, record.value) == (b"room-1", b"join")


async def test_ensure_topics_is_idempotent_and_refuses_an_existing_topic_with_another_partition_count(
    kafka_bootstrap: str, topics: TopicRegistry
) -> None:
    await ensure_topics(kafka_bootstrap, topics.all())  # a second service starting: nothing to do

    wider = replace(topics.commands, partitions=5)
    with pytest.raises(TopicPartitionMismatch, match=rf"{topics.commands.name} has 3 \(registry: 5\)"):
        await ensure_topics(kafka_bootstrap, [wider])
    narrower = replace(topics.commands, partitions=2)
    with pytest.raises(TopicPartitionMismatch, match=rf"{topics.commands.name} has 3 \(registry: 2\)"):
        await ensure_topics(kafka_bootstrap, [narrower])

    names = [spec.name for spec in topics.all()]
    assert await partition_counts(kafka_bootstrap, names) == {name: 3 for name in names}


# -- the launcher's own life cycle ---------------------------------------------------------------


@dataclass(frozen=True)
class StoppedBroker:
    data_dir: Path
    pid: int
    topic: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stopped_broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StoppedBroker]:
    """A broker that ran in its own data dir, received one record, and was stopped."""
    if shutil.which("java") is None:
        pytest.skip("the embedded broker needs Java")
    data_dir = tmp_path_factory.mktemp("kept-kafka")
    registry = topic_registry("kept", room_partitions=1)
    async with EmbeddedKafka(data_dir) as broker:
        assert broker.pid is not None
        pid = broker.pid
        await ensure_topics(broker.bootstrap_servers, registry.primary())
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(registry.room_events.name, key=b"room-1", value=b"kept")
        finally:
            await producer.stop()
    yield StoppedBroker(data_dir, pid, registry.room_events.name)


async def test_stop_leaves_no_jvm_of_the_broker_running(stopped_broker: StoppedBroker) -> None:
    assert not _broker_jvm_running(stopped_broker.pid, stopped_broker.data_dir)


async def test_a_broker_restarted_on_the_same_data_dir_keeps_its_records(stopped_broker: StoppedBroker) -> None:
    async with EmbeddedKafka(stopped_broker.data_dir) as broker:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False)
        await consumer.start()
        try:
            partition = TopicPartition(stopped_broker.topic, 0)
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            record = await asyncio.wait_for(consumer.getone(), timeout=30)
        finally:
            await consumer.stop()

    assert (record.key, record.value) == (b"room-1", b"kept")


# Stays alive until killed; logs go to stderr so stdout carries only the JVM's pid.
CHILD = """
import signal, sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from waitroom_devtools.broker import EmbeddedKafka
broker = EmbeddedKafka(sys.argv[1], startup_timeout_s=60)
broker.start()
print(broker.pid, flush=True)
signal.pause()
"""


@needs_java
@needs_linux
def test_a_broker_whose_parent_is_killed_with_sigkill_does_not_outlive_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    stderr = (tmp_path / "child.err").open("wb")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir)], stdout=subprocess.PIPE, stderr=stderr)
    jvm_pid: int | None = None
    try:
        assert child.stdout is not None
        jvm_pid = int(_read_line(child, child.stdout.fileno(), timeout_s=90, stderr=tmp_path / "child.err"))
        assert _broker_jvm_running(jvm_pid, data_dir)

        child.kill()
        child.wait()

        _wait_until(
            lambda: not _broker_jvm_running(jvm_pid, data_dir),
            timeout_s=15,
            message=f"the JVM {jvm_pid} outlived its SIGKILLed parent",
        )
    finally:
        child.kill()
        child.wait()
        stderr.close()
        if jvm_pid is not None and _broker_jvm_running(jvm_pid, data_dir):
            os.killpg(jvm_pid, signal.SIGKILL)  # the test failed: do not leave the JVM behind either


@needs_java
def test_a_broker_that_cannot_start_fails_with_the_tail_of_its_own_output(tmp_path: Path) -> None:
    broker = EmbeddedKafka(tmp_path, heap="1k")  # the JVM refuses a heap this small at once

    with pytest.raises(BrokerError, match=r"(?s)exited with code .*broker\.out.*heap"):
        broker.start()

    assert not broker.is_running()


# -- helpers ----------------------------------------------------------------------------------------


def _broker_jvm_running(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) JVM of the broker in ``data_dir``.

    Matching the data dir in the command line guards against the pid being reused by another process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and str(data_dir.resolve()).encode() in cmdline


def _wait_until(condition: Callable[[], bool], timeout_s: float, message: str) -> None:
    eventually_sync(condition, timeout_s, message)


def _read_line(child: subprocess.Popen[bytes], fd: int, timeout_s: float, stderr: Path) -> str:
    """The child's first stdout line, failing with its stderr if it dies or takes too long."""
    deadline = time.monotonic() + timeout_s
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or child.poll() is not None:
            pytest.fail(f"the child printed no JVM pid (exit {child.poll()}):\n{stderr.read_text()[-3000:]}")
        if select.select([fd], [], [], min(remaining, 0.5))[0]:
            chunk = os.read(fd, 1024)
            if not chunk:
                continue
            data += chunk
    return data.split(b"\n", 1)[0].decode()
