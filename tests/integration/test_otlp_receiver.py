"""The OTLP receiver: what the SDK's own exporters send arrives, can be queried, and reaches Zipkin."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind

from waitroom_devtools.otlp_receiver import OtlpReceiver
from waitroom_devtools.zipkin import ZipkinServer


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def _tracer_provider(
    endpoint: str, service: str, compression: Compression = Compression.NoCompression
) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", compression=compression)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _spans(receiver: OtlpReceiver, **query: str) -> list[dict]:
    response = httpx.get(f"{receiver.endpoint}/spans", params=query)
    response.raise_for_status()
    return response.json()["spans"]


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_spans_exported_over_otlp_http_protobuf_are_found_by_trace_id(
    receiver: OtlpReceiver, compression: Compression
) -> None:
    provider = _tracer_provider(receiver.endpoint, "waitroom-test", compression)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("earlier") as earlier:
        pass
    with tracer.start_as_current_span(
        "send waitroom.commands", kind=SpanKind.PRODUCER, attributes={"waitroom.room_id": "r1", "retries": 2}
    ) as parent:
        with tracer.start_as_current_span("decide", links=[Link(earlier.get_span_context())]):
            pass
    provider.shutdown()

    trace_id = format(parent.get_span_context().trace_id, "032x")
    spans = {s["name"]: s for s in _spans(receiver, trace_id=trace_id)}
    assert set(spans) == {"send waitroom.commands", "decide"}
    producer, child = spans["send waitroom.commands"], spans["decide"]
    assert producer["service"] == "waitroom-test"
    assert producer["kind"] == "PRODUCER"
    assert producer["attributes"] == {"waitroom.room_id": "r1", "retries": 2}
    assert child["parent_span_id"] == producer["span_id"]
    assert child["links"] == [
        {
            "trace_id": format(earlier.get_span_context().trace_id, "032x"),
            "span_id": format(earlier.get_span_context().span_id, "016x"),
        }
    ]
    assert _spans(receiver, attr="waitroom.room_id:r1")[0]["span_id"] == producer["span_id"]
    assert _spans(receiver, service="someone-else") == []


def test_spans_posted_as_otlp_json_with_hex_ids_are_accepted(receiver: OtlpReceiver) -> None:
    trace_id, span_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-client"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "manual"},
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": span_id,
                                "name": "GET /v1/rooms/{room_id}",
                                "kind": 2,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": "1544712661000000000",
                                "attributes": [{"key": "http.status_code", "value": {"intValue": "200"}}],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    response = httpx.post(
        f"{receiver.endpoint}/v1/traces",
        content=gzip.compress(json.dumps(body).encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    [span] = _spans(receiver, trace_id=trace_id)
    assert (span["span_id"], span["kind"], span["service"]) == (span_id, "SERVER", "json-client")
    assert span["attributes"] == {"http.status_code": 200}
    assert span["end_ns"] - span["start_ns"] == 1_000_000_000


def test_a_body_that_is_not_otlp_is_refused_with_400(receiver: OtlpReceiver) -> None:
    bad_proto = httpx.post(
        f"{receiver.endpoint}/v1/traces", content=b"\xff\xff\xff", headers={"Content-Type": "application/x-protobuf"}
    )
    bad_json = httpx.post(
        f"{receiver.endpoint}/v1/traces", content=b'{"resourceSpans": 3}', headers={"Content-Type": "application/json"}
    )
    assert (bad_proto.status_code, bad_json.status_code) == (400, 400)
    assert httpx.get(f"{receiver.endpoint}/healthz").json() == {"status": "ok"}


def test_metric_points_exported_over_otlp_are_kept_with_their_attributes(receiver: OtlpReceiver) -> None:
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{receiver.endpoint}/v1/metrics"), export_interval_millis=60_000
    )
    provider = MeterProvider(resource=Resource.create({"service.name": "metered"}), metric_readers=[reader])
    meter = provider.get_meter("test")
    meter.create_counter("waitroom.test.requests").add(3, {"route": "/v1/rooms"})
    meter.create_histogram("waitroom.test.latency", unit="s").record(0.25)
    provider.force_flush()
    provider.shutdown()

    points = httpx.get(f"{receiver.endpoint}/metrics", params={"service": "metered"}).json()["points"]
    by_name = {p["name"]: p for p in points}
    assert by_name["waitroom.test.requests"]["value"] == 3
    assert by_name["waitroom.test.requests"]["attributes"] == {"route": "/v1/rooms"}
    assert by_name["waitroom.test.latency"]["count"] == 1
    assert by_name["waitroom.test.latency"]["sum"] == pytest.approx(0.25)


def test_spans_bridged_to_a_real_zipkin_can_be_found_there_by_ticket_tag(tmp_path: Path) -> None:
    with ZipkinServer(tmp_path / "zipkin.log") as zipkin, OtlpReceiver(zipkin_url=zipkin.url) as receiver:
        provider = _tracer_provider(receiver.endpoint, "waitroom-ticketing")
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span(
            "POST /v1/rooms/{room_id}/tickets", kind=SpanKind.SERVER, attributes={"waitroom.ticket_id": "t-42"}
        ) as root:
            with tracer.start_as_current_span(
                "send waitroom.commands",
                kind=SpanKind.PRODUCER,
                attributes={"messaging.destination.name": "waitroom.commands"},
            ):
                pass
        provider.shutdown()
        trace_id = format(root.get_span_context().trace_id, "032x")

        deadline = time.monotonic() + 15
        found: list = []
        while time.monotonic() < deadline and not found:
            found = httpx.get(
                f"{zipkin.url}/api/v2/traces", params={"annotationQuery": "waitroom.ticket_id=t-42"}
            ).json()
            if not found:
                time.sleep(0.2)
        assert found, "the trace never reached Zipkin"
        [trace] = found
        by_name = {span["name"].lower(): span for span in trace}
        assert {span["traceId"] for span in trace} == {trace_id}
        server = by_name["post /v1/rooms/{room_id}/tickets"]
        producer = by_name["send waitroom.commands"]
        assert server["kind"] == "SERVER" and producer["kind"] == "PRODUCER"
        assert producer["parentId"] == server["id"]
        assert server["localEndpoint"]["serviceName"] == "waitroom-ticketing"
        assert producer["remoteEndpoint"]["serviceName"] == "waitroom.commands"
