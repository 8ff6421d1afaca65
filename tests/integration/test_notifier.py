"""The notifier as a process, between the real broker and a real moto server over HTTP.

Each test starts its own ``python -m moto.server`` on a free loopback port and its own notifier
process (boto3 pointed at moto by ``AWS_ENDPOINT_URL``), writes RoomStats and alerts to the topics
with the codec, exactly as the stats service does, and reads back what AWS holds:

* metrics with CloudWatch's ``GetMetricData``;
* the SNS topic's published notifications from moto's own record of every Publish on the topic
  (``Topic.sent_notifications`` in ``/moto-api/data.json``): what SNS accepted, with subject,
  message and attributes, independent of any subscriber;
* alarms with ``DescribeAlarms``, subscriptions with ``ListSubscriptionsByTopic``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import boto3
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from support.waiting import eventually

from waitroom_devtools.procs import ServiceProcess, free_port
from waitroom_events.codec import HEADER_TYPE
from waitroom_events.stats import RoomStats, ThresholdBreached, ThresholdRecovered
from waitroom_events.topics import TopicRegistry, dlq_name
from waitroom_platform.admin import uncommitted
from waitroom_platform.kafka import HEADER_ERROR, Publisher, make_producer, partitions_of
from waitroom_platform.settings import KafkaSettings

REGION = "eu-west-1"
T = TypeVar("T")


class MotoServer:
    """A real moto server process on a free loopback port."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = ServiceProcess(
            "moto",
            "moto.server",
            {},
            log_path,
            ready_url=f"{self.url}/moto-api/data.json",
            args=("-H", "127.0.0.1", "-p", str(self.port)),
        )

    def start(self) -> MotoServer:
        self.process.start().wait_ready(60)
        return self

    def env(self) -> dict[str, str]:
        """boto3's standard settings, pointing at this server and at no credentials of the machine."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self, service: str) -> Any:
        return boto3.session.Session().client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def published(self, topic_arn: str) -> list[dict[str, Any]]:
        """Every notification the SNS topic accepted, in order: id, message, subject, attributes."""
        with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=10) as response:  # noqa: S310
            data = json.load(response)
        seen: dict[str, dict[str, Any]] = {}
        # moto tracks a model object per CreateTopic call; the topic's notifications live on one of them.
        for topic in data["sns"]["Topic"]:
            if topic["arn"] != topic_arn:
                continue
            for message_id, message, subject, attributes, _group in topic["sent_notifications"]:
                seen[message_id] = {
                    "message_id": message_id,
                    "message": message,
                    "subject": subject,
                    "attributes": attributes,
                }
        return list(seen.values())

    def pause(self) -> None:
        """SIGSTOP: the server stops answering (connections hang), and keeps its state for later."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.alive():
            self.resume()
            self.process.stop()


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path / "moto.log").start()
    yield server
    server.stop()


def prefix_of(topics: TopicRegistry) -> str:
    return topics.commands.name.removesuffix(".commands")


class NotifierLauncher:
    def __init__(self, kafka_bootstrap: str, moto: MotoServer, topics: TopicRegistry, log_dir: Path) -> None:
        self.moto = moto
        self.topics = topics
        self.log_dir = log_dir
        self.base_env = {
            **moto.env(),
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "WAITROOM_TOPIC_PREFIX": prefix_of(topics),
            "WAITROOM_ROOM_PARTITIONS": str(topics.commands.partitions),
            "WAITROOM_LOG_FORMAT": "json",
            "WAITROOM_LOG_LEVEL": "INFO",
            "WAITROOM_NOTIFIER_HEALTH_PORT": "0",
            "WAITROOM_NOTIFIER_SNS_TOPIC_NAME": f"alerts-{prefix_of(topics)}",
            "WAITROOM_NOTIFIER_ALARM_PREFIX": prefix_of(topics),
            "WAITROOM_NOTIFIER_BACKOFF_INITIAL_S": "0.2",
            "WAITROOM_NOTIFIER_BACKOFF_MAX_S": "1",
            "WAITROOM_NOTIFIER_AWS_CONNECT_TIMEOUT_S": "1",
            "WAITROOM_NOTIFIER_AWS_READ_TIMEOUT_S": "1",
            "WAITROOM_NOTIFIER_AWS_MAX_ATTEMPTS": "2",
        }
        self.started: list[ServiceProcess] = []

    @property
    def topic_name(self) -> str:
        return self.base_env["WAITROOM_NOTIFIER_SNS_TOPIC_NAME"]

    def start(self, **extra: str) -> ServiceProcess:
        index = len(self.started)
        proc = ServiceProcess(
            f"notifier-{index}", "waitroom_notifier", {**self.base_env, **extra}, self.log_dir / f"notifier-{index}.log"
        )
        self.started.append(proc.start())
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop()


@pytest.fixture
def notifier(
    kafka_bootstrap: str, moto: MotoServer, topics: TopicRegistry, tmp_path: Path
) -> Iterator[NotifierLauncher]:
    launcher = NotifierLauncher(kafka_bootstrap, moto, topics, tmp_path)
    yield launcher
    launcher.stop_all()


@pytest_asyncio.fixture(loop_scope="session")
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = make_producer(KafkaSettings(bootstrap_servers=kafka_bootstrap))
    await producer.start()
    yield producer
    await producer.stop()


def log_events(proc: ServiceProcess) -> list[dict[str, Any]]:
    events = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line of the console span exporter, or of a library
        if isinstance(event, dict) and "event" in event:
            events.append(event)
    return events


async def wait_log(proc: ServiceProcess, event: str, timeout: float = 60, count: int = 1) -> list[dict[str, Any]]:
    async def probe() -> list[dict[str, Any]] | None:
        assert proc.alive(), f"{proc.name} exited with {proc.returncode()}:\n{proc.log_tail()}"
        found = [e for e in log_events(proc) if e.get("event") == event]
        return found if len(found) >= count else None

    return await eventually(probe, timeout, f"{count} x {event!r} in {proc.name}'s log")


async def group_caught_up(bootstrap: str, group: str, topic: str) -> bool:
    """Whether ``group`` has committed every record of ``topic`` that exists now."""
    return all(behind <= 0 for behind in (await uncommitted(bootstrap, group, topic)).values())


async def dead_letters(bootstrap: str, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(dlq_name(topic), p) for p in await partitions_of(consumer, dlq_name(topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records = []
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                records += (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
        return records
    finally:
        await consumer.stop()


async def send_poison(producer: AIOKafkaProducer, topic: str, type_name: str, room_id: str) -> None:
    await producer.send_and_wait(
        topic, b'{"room_id": ', key=room_id.encode(), headers=[(HEADER_TYPE, type_name.encode())]
    )


def stats(room_id: str, at: float, **fields: Any) -> RoomStats:
    values: dict[str, Any] = dict(
        room_id=room_id,
        at=at,
        capacity=50,
        active=50,
        waiting=0,
        paused=False,
        window_start=at - 60,
        joins_1m=0,
        admissions_1m=0,
        leaves_1m=0,
        expiries_waiting_1m=0,
        expiries_admitted_1m=0,
        joins_5m=0,
        admissions_5m=0,
        leaves_5m=0,
        expiries_waiting_5m=0,
        expiries_admitted_5m=0,
    )
    values.update(fields)
    return RoomStats(**values)


def metric_query(qid: str, namespace: str, metric: str, dims: dict[str, str], stat: str) -> dict[str, Any]:
    return {
        "Id": qid,
        "MetricStat": {
            "Metric": {
                "Namespace": namespace,
                "MetricName": metric,
                "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()],
            },
            "Period": 60,
            "Stat": stat,
        },
    }


async def test_after_a_scenario_get_metric_data_returns_each_rooms_numbers_and_the_all_rooms_rollup(
    kafka_bootstrap: str,
    topics: TopicRegistry,
    moto: MotoServer,
    notifier: NotifierLauncher,
    producer: AIOKafkaProducer,
) -> None:
    namespace = f"Waitroom-{uuid4().hex[:6]}"
    stack = prefix_of(topics)
    proc = notifier.start(
        WAITROOM_NOTIFIER_NAMESPACE=namespace,
        WAITROOM_NOTIFIER_DIMENSIONS=json.dumps({"Stack": stack}),
        WAITROOM_NOTIFIER_METRICS_PER_CALL="7",  # several PutMetricData calls per fetch
        WAITROOM_NOTIFIER_ALERTS_ENABLED="false",
    )
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
    t0 = minute.timestamp()
    publisher = Publisher(producer)
    # Three snapshots of a busy room in one minute, ten seconds apart, and one of a quiet room.
    for i, (active, waiting, wait_p90, estimated) in enumerate(
        [(50, 120, 240.0, 600.0), (50, 150, 260.0, 700.0), (48, 90, 250.0, 450.0)]
    ):
        await publisher.publish(
            topics.room_stats.name,
            stats(
                "busy",
                t0 + 10 * i,
                active=active,
                waiting=waiting,
                admissions_1m=12 + i,
                expiries_waiting_1m=2,
                expiries_admitted_1m=i,
                wait_p90_s=wait_p90,
                estimated_wait_s=estimated,
            ),
        )
    await publisher.publish(topics.room_stats.name, stats("quiet", t0 + 5, capacity=10, active=3, admissions_1m=1))
    await send_poison(producer, topics.room_stats.name, RoomStats.TYPE, "busy")

    cloudwatch = moto.client("cloudwatch")
    room = {"Stack": stack, "Room": "busy"}
    expected = {
        ("Active", "Maximum"): 50,
        ("Active", "Minimum"): 48,
        ("Waiting", "Maximum"): 150,
        ("Waiting", "SampleCount"): 3,
        ("Capacity", "Maximum"): 50,
        ("AdmissionsPerMinute", "Maximum"): 14,
        ("ExpiriesPerMinute", "Maximum"): 4,
        ("WaitP90", "Average"): 250.0,
        ("EstimatedWait", "Maximum"): 700.0,
    }
    queries = [metric_query(f"q{i}", namespace, m, room, s) for i, (m, s) in enumerate(expected)]
    queries += [
        metric_query("quiet_active", namespace, "Active", {"Stack": stack, "Room": "quiet"}, "Maximum"),
        metric_query("quiet_wait", namespace, "EstimatedWait", {"Stack": stack, "Room": "quiet"}, "SampleCount"),
        metric_query("all_active", namespace, "Active", {"Stack": stack}, "Minimum"),
        metric_query("all_waiting", namespace, "Waiting", {"Stack": stack}, "SampleCount"),
    ]

    async def results() -> dict[str, list[float]] | None:
        assert proc.alive(), proc.log_tail()
        answer = await asyncio.to_thread(
            cloudwatch.get_metric_data,
            MetricDataQueries=queries,
            StartTime=minute,
            EndTime=minute + timedelta(minutes=1),
        )
        values = {r["Id"]: r["Values"] for r in answer["MetricDataResults"]}
        return values if values["all_waiting"] == [4] and values["q3"] == [3] else None

    values = await eventually(results, 30, "the snapshots in CloudWatch")

    assert {key: values[f"q{i}"] for i, key in enumerate(expected)} == {key: [v] for key, v in expected.items()}
    assert values["quiet_active"] == [3]
    assert values["quiet_wait"] == []  # the quiet room has no estimate: no datum, not a zero
    assert values["all_active"] == [3]  # the rollup across rooms, what the managed alarms watch
    assert await eventually(lambda: dead_letters(kafka_bootstrap, topics.room_stats.name), 10, "the poison snapshot")
    assert await eventually(
        lambda: group_caught_up(kafka_bootstrap, f"{prefix_of(topics)}.notifier-metrics", topics.room_stats.name),
        10,
        "the metrics offsets committed",
    )


def breach(room_id: str, alert_id: str, at: float, value: float = 1200.0) -> ThresholdBreached:
    return ThresholdBreached(
        room_id=room_id,
        alert_id=alert_id,
        rule="estimated_wait_s",
        value=value,
        threshold=900.0,
        at=at,
        summary=f"{room_id}: the estimated wait is over 15 minutes.",
    )


def recovery(room_id: str, alert_id: str, at: float, breached_at: float) -> ThresholdRecovered:
    return ThresholdRecovered(
        room_id=room_id,
        alert_id=alert_id,
        rule="estimated_wait_s",
        value=300.0,
        threshold=900.0,
        at=at,
        breached_at=breached_at,
    )


def notification_ids(published: list[dict[str, Any]]) -> list[str]:
    return [n["attributes"]["notification_id"]["Value"] for n in published]


async def test_a_breach_and_its_recovery_each_reach_the_sns_topic_once_with_a_readable_subject(
    kafka_bootstrap: str,
    topics: TopicRegistry,
    moto: MotoServer,
    notifier: NotifierLauncher,
    producer: AIOKafkaProducer,
) -> None:
    sns = moto.client("sns")
    topic_arn = sns.create_topic(Name=notifier.topic_name)["TopicArn"]  # not managed: an existing topic
    proc = notifier.start(WAITROOM_NOTIFIER_METRICS_ENABLED="false")
    publisher = Publisher(producer)
    now = time.time()
    alert_id = f"concert/estimated_wait_s/{uuid4().hex[:8]}"
    await publisher.publish(topics.alerts.name, breach("concert", alert_id, now - 300))
    await send_poison(producer, topics.alerts.name, ThresholdBreached.TYPE, "concert")
    await publisher.publish(topics.alerts.name, recovery("concert", alert_id, now, breached_at=now - 300))

    def two_published() -> list[dict[str, Any]] | None:
        published = moto.published(topic_arn)
        return published if len(published) >= 2 else None

    await eventually(lambda: asyncio.to_thread(two_published), 30, "two notifications on the topic")
    assert await eventually(
        lambda: group_caught_up(kafka_bootstrap, f"{prefix_of(topics)}.notifier-alerts", topics.alerts.name),
        10,
        "the alert offsets committed",
    )
    published = moto.published(topic_arn)

    assert notification_ids(published) == [f"{alert_id}:breach", f"{alert_id}:recovery"]
    breach_mail, recovery_mail = published
    assert breach_mail["subject"] == "[waitroom] ALARM: room concert: estimated_wait_s is 1200 (threshold 900)"
    assert recovery_mail["subject"] == "[waitroom] OK: room concert: estimated_wait_s back to 300 (threshold 900)"
    for mail, kind in [(breach_mail, "breach"), (recovery_mail, "recovery")]:
        bodies = json.loads(mail["message"])
        assert "concert" in bodies["email"] and alert_id in bodies["email"]
        event = json.loads(bodies["sqs"])
        assert event["alert_id"] == alert_id and event["kind"] == kind and event["room_id"] == "concert"
        assert mail["attributes"]["alert_id"] == {"Type": "String", "Value": alert_id}
    poison = await dead_letters(kafka_bootstrap, topics.alerts.name)
    assert len(poison) == 1 and dict(poison[0].headers)[HEADER_ERROR]

    # A restart resumes after the committed alerts: the next alert is published, the old ones are not again.
    proc.stop()
    again = notifier.start(WAITROOM_NOTIFIER_METRICS_ENABLED="false")
    await publisher.publish(topics.alerts.name, breach("concert", f"{alert_id}-next", time.time()))
    await wait_log(again, "alert_published")
    assert notification_ids(moto.published(topic_arn)) == [
        f"{alert_id}:breach",
        f"{alert_id}:recovery",
        f"{alert_id}-next:breach",
    ]


def describe(cloudwatch: Any, prefix: str) -> list[dict[str, Any]]:
    return sorted(
        cloudwatch.describe_alarms(AlarmNamePrefix=f"{prefix}-")["MetricAlarms"], key=lambda a: a["AlarmName"]
    )


async def test_managed_alarms_make_topic_subscription_and_alarms_and_a_second_start_changes_nothing(
    topics: TopicRegistry, moto: MotoServer, notifier: NotifierLauncher
) -> None:
    managed = {
        "WAITROOM_NOTIFIER_MANAGED_ALARMS": "true",
        "WAITROOM_NOTIFIER_OPERATOR_EMAIL": "oncall@example.com",
        "WAITROOM_NOTIFIER_NAMESPACE": "Waitroom",
        "WAITROOM_NOTIFIER_DIMENSIONS": json.dumps({"Environment": "test"}),
        "WAITROOM_NOTIFIER_ALARM_THRESHOLDS": json.dumps({"EstimatedWait": 600, "Waiting": 5000}),
    }
    first = notifier.start(**managed)
    provisioned = (await wait_log(first, "notifier_provisioned"))[0]
    await wait_log(first, "notifier_ready")
    sns, cloudwatch = moto.client("sns"), moto.client("cloudwatch")
    prefix = prefix_of(topics)
    topic_arn = provisioned["topic_arn"]

    assert topic_arn.endswith(f":{notifier.topic_name}")
    assert provisioned["topic_created"] and provisioned["subscription_created"]
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subscriptions] == [("email", "oncall@example.com")]
    alarms = describe(cloudwatch, prefix)
    assert [
        (a["AlarmName"], a["MetricName"], a["Threshold"], a["ComparisonOperator"], a["Statistic"]) for a in alarms
    ] == [
        (f"{prefix}-EstimatedWait", "EstimatedWait", 600.0, "GreaterThanThreshold", "Maximum"),
        (f"{prefix}-Waiting", "Waiting", 5000.0, "GreaterThanThreshold", "Maximum"),
    ]
    for alarm in alarms:
        assert alarm["Namespace"] == "Waitroom"
        assert alarm["Dimensions"] == [{"Name": "Environment", "Value": "test"}]
        assert alarm["AlarmActions"] == alarm["OKActions"] == [topic_arn]
        assert alarm["ActionsEnabled"] is True

    first.stop()
    second = notifier.start(**managed)
    again = (await wait_log(second, "notifier_provisioned"))[0]

    assert again["changes"] == 0 and again["topic_arn"] == topic_arn
    assert sorted(again["alarms_unchanged"]) == [f"{prefix}-EstimatedWait", f"{prefix}-Waiting"]
    assert describe(cloudwatch, prefix) == alarms  # configuration timestamps included: nothing was written
    assert sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"] == subscriptions
    assert [t["TopicArn"] for t in sns.list_topics()["Topics"]].count(topic_arn) == 1


async def test_with_the_moto_server_stopped_for_a_while_no_alert_is_lost(
    kafka_bootstrap: str,
    topics: TopicRegistry,
    moto: MotoServer,
    notifier: NotifierLauncher,
    producer: AIOKafkaProducer,
) -> None:
    proc = notifier.start(WAITROOM_NOTIFIER_MANAGED_ALARMS="true", WAITROOM_NOTIFIER_METRICS_ENABLED="false")
    topic_arn = (await wait_log(proc, "notifier_provisioned"))[0]["topic_arn"]
    publisher = Publisher(producer)
    now = time.time()
    await publisher.publish(topics.alerts.name, breach("before", "before/1", now))
    await wait_log(proc, "alert_published")

    moto.pause()
    try:
        sent = []
        for i in range(3):
            room = f"room-{i}"
            await publisher.publish(topics.alerts.name, breach(room, f"{room}/1", now + i))
            await publisher.publish(topics.alerts.name, recovery(room, f"{room}/1", now + 60 + i, breached_at=now + i))
            sent += [f"{room}/1:breach", f"{room}/1:recovery"]
        # The notifier is up and trying: it has failed several times against the stopped server.
        await wait_log(proc, "aws_call_failed", timeout=30, count=3)
    finally:
        moto.resume()

    def all_published() -> list[str] | None:
        ids = notification_ids(moto.published(topic_arn))
        return ids if set(sent) <= set(ids) else None

    ids = await eventually(lambda: asyncio.to_thread(all_published), 60, "every alert published after the outage")
    assert await eventually(
        lambda: group_caught_up(kafka_bootstrap, f"{prefix_of(topics)}.notifier-alerts", topics.alerts.name),
        20,
        "the alert offsets committed",
    )
    ids = notification_ids(moto.published(topic_arn))

    assert set(ids) == {"before/1:breach", *sent}
    assert ids.count("before/1:breach") == 1  # accepted before the outage: never sent again
    # Alerts go out one at a time, so only the one in flight when the server stopped can repeat: each
    # timed-out attempt sat in the stopped server's accept queue and was carried out once it resumed.
    assert len({i for i in ids if ids.count(i) > 1}) <= 1
    # Within each room, the recovery never overtakes its breach.
    for i in range(3):
        assert ids.index(f"room-{i}/1:breach") < ids.index(f"room-{i}/1:recovery")
    assert proc.alive()
    assert not [e for e in log_events(proc) if e.get("event") in ("notifier_failed", "record_dead_lettered")]
