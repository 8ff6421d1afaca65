"""How the notifier delivers to AWS, with recording fakes in place of CloudWatch and SNS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from pydantic import ValidationError
from test_notifier_mapping import breached, recovered, snapshot

from waitroom_notifier.alerts import AlertNotification
from waitroom_notifier.aws import Backoff, Rejected, call_until_accepted, is_rejection
from waitroom_notifier.forwarder import AlertHandler, MetricsHandler
from waitroom_notifier.metrics import METRICS, MetricDatum
from waitroom_notifier.settings import NotifierSettings


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Publish"
    )


class FlakyCall:
    """Fails with each of ``errors`` in turn, then returns ``result``."""

    def __init__(self, errors: Sequence[Exception], result: str = "ok") -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


NO_JITTER = Backoff(0.5, 8.0, rng=lambda: 1.0)


def test_backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() -> None:
    assert [NO_JITTER.delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    low = Backoff(0.5, 8.0, rng=lambda: 0.0)
    assert [low.delay(n) for n in (1, 5)] == [0.25, 4.0]
    assert Backoff(0.5, 8.0).delay(10_000) <= 8.0


@pytest.mark.parametrize(
    "error",
    [
        client_error("Throttling", 400),
        client_error("ThrottlingException", 400),
        client_error("InternalError", 500),
        client_error("ServiceUnavailable", 503),
        client_error("AuthorizationError", 403),
        client_error("NotFound", 404),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    ],
)
async def test_throttling_server_errors_outages_and_credentials_are_retried_until_accepted(error: Exception) -> None:
    call = FlakyCall([error, error, error], result="message-1")
    sleep = RecordingSleep()

    result = await call_until_accepted(call, what="Publish", backoff=NO_JITTER, sleep=sleep)

    assert result == "message-1"
    assert call.calls == 4
    assert sleep.delays == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("code", ["InvalidParameter", "InvalidParameterValue", "ValidationError"])
async def test_a_request_aws_refuses_for_its_content_is_rejected_at_once(code: str) -> None:
    call = FlakyCall([client_error(code, 400)])
    sleep = RecordingSleep()

    with pytest.raises(Rejected, match=code):
        await call_until_accepted(call, what="Publish", backoff=NO_JITTER, sleep=sleep)

    assert call.calls == 1 and sleep.delays == []
    assert not is_rejection(client_error(code, 500))


class RecordingMetrics:
    def __init__(self) -> None:
        self.calls: list[list[MetricDatum]] = []

    def put(self, datums: Sequence[MetricDatum]) -> None:
        self.calls.append(list(datums))


class RecordingSns:
    def __init__(self, failures: Sequence[Exception] = ()) -> None:
        self.failures = list(failures)
        self.published: list[AlertNotification] = []

    def publish(self, notification: AlertNotification) -> str:
        if self.failures:
            raise self.failures.pop(0)
        self.published.append(notification)
        return f"m-{len(self.published)}"


def record(offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("t.alerts", 0, offset, 0, 0, b"concert", b"{}", None, 7, 2, [])


def fast_backoff() -> Backoff:
    return Backoff(0.001, 0.002)


async def test_snapshots_of_a_fetch_are_sent_in_as_few_calls_as_the_per_call_limit_allows() -> None:
    sink = RecordingMetrics()
    handler = MetricsHandler(
        sink, fast_backoff(), dimensions={}, rollup=True, storage_resolution=60, per_call=20, max_records=500
    )
    snapshots: list[tuple[Any, Any]] = [(record(i), snapshot(room_id=f"room-{i}")) for i in range(5)]

    await handler.deliver(snapshots)

    total = 5 * 2 * len(METRICS)
    assert [len(c) for c in sink.calls] == [20, 20, 20, 20]
    assert sum(len(c) for c in sink.calls) == total == handler.datums_put
    rooms = {dict(d.dimensions).get("Room") for call in sink.calls for d in call}
    assert rooms == {None, "room-0", "room-1", "room-2", "room-3", "room-4"}


async def test_each_alert_is_published_once_even_after_transient_failures() -> None:
    sink = RecordingSns([client_error("Throttling", 400), EndpointConnectionError(endpoint_url="x")])
    handler = AlertHandler(sink, fast_backoff(), source="waitroom")

    await handler.deliver([(record(0), breached()), (record(1), recovered())])

    assert [n.kind for n in sink.published] == ["breach", "recovery"]
    assert len({n.notification_id for n in sink.published}) == 2
    assert handler.published == 2


def test_settings_refuse_an_unknown_alarm_metric_and_a_clashing_dimension(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAITROOM_NOTIFIER_ALARM_THRESHOLDS", '{"Queue": 3}')
    with pytest.raises(ValidationError, match="unknown metrics"):
        NotifierSettings()
    monkeypatch.delenv("WAITROOM_NOTIFIER_ALARM_THRESHOLDS")
    monkeypatch.setenv("WAITROOM_NOTIFIER_DIMENSIONS", '{"Room": "x"}')
    with pytest.raises(ValidationError, match="own dimension"):
        NotifierSettings()


def test_settings_read_thresholds_and_dimensions_as_json_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAITROOM_NOTIFIER_ALARM_THRESHOLDS", '{"Waiting": 5000, "EstimatedWait": 600}')
    monkeypatch.setenv("WAITROOM_NOTIFIER_DIMENSIONS", '{"Environment": "staging"}')
    monkeypatch.setenv("WAITROOM_NOTIFIER_MANAGED_ALARMS", "true")
    monkeypatch.setenv("WAITROOM_TOPIC_PREFIX", "acme")

    settings = NotifierSettings()

    assert settings.managed_alarms
    assert settings.dimensions == {"Environment": "staging"}
    assert [(r.metric, r.threshold) for r in settings.alarm_rules()] == [("EstimatedWait", 600.0), ("Waiting", 5000.0)]
    assert settings.group("alerts") == "acme.notifier-alerts"


def test_a_ten_second_alarm_period_needs_high_resolution_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAITROOM_NOTIFIER_ALARM_PERIOD_S", "10")
    with pytest.raises(ValidationError, match="high resolution"):
        NotifierSettings()
    monkeypatch.setenv("WAITROOM_NOTIFIER_STORAGE_RESOLUTION", "1")
    assert NotifierSettings().alarm_period_s == 10
