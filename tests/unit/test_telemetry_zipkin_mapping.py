"""OTLP spans in Zipkin's v2 model, as the OpenTelemetry specification maps them."""

from __future__ import annotations

from typing import Any

from waitroom_devtools.otlp_receiver import to_zipkin


def _span(**overrides: Any) -> dict[str, Any]:
    span: dict[str, Any] = {
        "trace_id": "5b8efff798038103d269b633813fc60c",
        "span_id": "eee19b7ec3c1b174",
        "parent_span_id": None,
        "name": "process waitroom.commands",
        "kind": "CONSUMER",
        "service": "waitroom-ticketing",
        "scope": "waitroom.kafka",
        "start_ns": 1_700_000_000_123_456_789,
        "end_ns": 1_700_000_000_125_456_789,
        "attributes": {"waitroom.room_id": "demo", "messaging.kafka.offset": 7, "retry": True, "ids": [1, 2]},
        "events": [],
        "links": [],
        "status": {"code": "UNSET", "message": ""},
    }
    span.update(overrides)
    return span


def test_a_consumer_span_keeps_ids_kind_service_and_microsecond_times() -> None:
    zipkin = to_zipkin(_span())
    assert zipkin["traceId"] == "5b8efff798038103d269b633813fc60c"
    assert zipkin["id"] == "eee19b7ec3c1b174"
    assert "parentId" not in zipkin
    assert zipkin["kind"] == "CONSUMER"
    assert zipkin["localEndpoint"] == {"serviceName": "waitroom-ticketing"}
    assert zipkin["timestamp"] == 1_700_000_000_123_456
    assert zipkin["duration"] == 2000


def test_attributes_become_string_tags() -> None:
    tags = to_zipkin(_span())["tags"]
    assert tags["waitroom.room_id"] == "demo"
    assert tags["messaging.kafka.offset"] == "7"
    assert tags["retry"] == "true"
    assert tags["ids"] == "[1, 2]"
    assert tags["otel.scope.name"] == "waitroom.kafka"


def test_an_internal_span_has_no_kind_and_a_parent() -> None:
    zipkin = to_zipkin(_span(kind="INTERNAL", parent_span_id="0102030405060708"))
    assert "kind" not in zipkin
    assert zipkin["parentId"] == "0102030405060708"


def test_an_error_status_becomes_the_error_tag() -> None:
    tags = to_zipkin(_span(status={"code": "ERROR", "message": "broker unreachable"}))["tags"]
    assert tags["error"] == "broker unreachable"
    assert tags["otel.status_code"] == "ERROR"


def test_links_which_zipkin_lacks_are_kept_as_tags_naming_the_linked_span() -> None:
    links = [{"trace_id": "a" * 32, "span_id": "b" * 16}, {"trace_id": "c" * 32, "span_id": "d" * 16}]
    tags = to_zipkin(_span(links=links))["tags"]
    assert tags["otel.link.0"] == f"{'a' * 32}-{'b' * 16}"
    assert tags["otel.link.1"] == f"{'c' * 32}-{'d' * 16}"


def test_a_zero_length_span_lasts_one_microsecond_and_a_producer_names_its_topic() -> None:
    zipkin = to_zipkin(
        _span(
            kind="PRODUCER",
            end_ns=1_700_000_000_123_456_789,
            attributes={"messaging.destination.name": "waitroom.room-events"},
        )
    )
    assert zipkin["duration"] == 1
    assert zipkin["remoteEndpoint"] == {"serviceName": "waitroom.room-events"}


def test_span_events_become_annotations() -> None:
    zipkin = to_zipkin(_span(events=[{"name": "exception", "time_ns": 1_700_000_000_124_000_000, "attributes": {}}]))
    assert zipkin["annotations"] == [{"timestamp": 1_700_000_000_124_000, "value": "exception"}]
