"""A small OTLP/HTTP receiver: keeps spans and metric points in memory and can bridge them to Zipkin.

Two jobs, one piece of code:

* **the tests' collector**: the end-to-end tests point every service at it and ask it which spans
  arrived (``GET /spans?trace_id=...``), instead of parsing console output;
* **the dev stack's bridge to Zipkin**: Zipkin's server takes only its own v2 JSON (its OTLP module
  is not on Maven Central), so with ``--zipkin-url`` every span is also converted to Zipkin v2 and
  posted there, which lets the services speak plain OTLP and nothing Zipkin-specific.

It accepts ``POST /v1/traces`` and ``POST /v1/metrics`` (and ``/v1/logs``, dropped) as protobuf or
JSON, gzip or not, the two encodings the OTLP/HTTP specification defines. Queries:

* ``GET /spans`` with optional ``trace_id``, ``service``, ``name`` and ``attr=key:value`` filters;
* ``GET /metrics`` with optional ``name`` and ``service``: the latest data points;
* ``GET /healthz``.

Memory is bounded (the newest ``--max-spans`` spans and points are kept). Only loopback by default.

``python -m waitroom_devtools.otlp_receiver --port 4318 [--zipkin-url http://127.0.0.1:9411]``
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import queue
import signal
import sys
import threading
import urllib.error
import urllib.request
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

log = structlog.get_logger()

LOOPBACK = "127.0.0.1"
DEFAULT_MAX_ITEMS = 200_000

#: OTLP span kinds (SPAN_KIND_*) as Zipkin names them; INTERNAL and UNSPECIFIED have none.
_KIND_NAMES = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_ZIPKIN_KINDS = {"SERVER", "CLIENT", "PRODUCER", "CONSUMER"}
_STATUS_NAMES = {0: "UNSET", 1: "OK", 2: "ERROR"}


# ---------------------------------------------------------------------------------------------
# decoding OTLP


class BadPayload(ValueError):
    """The body is not an OTLP export request in the encoding it claims."""


def _value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(any_value.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(any_value.bytes_value).decode()
    return getattr(any_value, kind)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _hex_ids_to_base64(node: Any, keys: frozenset[str] = frozenset({"traceId", "spanId", "parentSpanId"})) -> None:
    """OTLP/JSON writes ids as hex, where protobuf's JSON mapping expects base64: convert in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError as exc:
                    raise BadPayload(f"{key} is not hex: {value!r}") from exc
            else:
                _hex_ids_to_base64(value, keys)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item, keys)


def parse_request(body: bytes, content_type: str, message: Any) -> Any:
    """Fill the protobuf ``message`` from an OTLP/HTTP body (``application/x-protobuf`` or ``/json``)."""
    if content_type.split(";")[0].strip().lower() == "application/json":
        try:
            document = json.loads(body or b"{}")
        except ValueError as exc:
            raise BadPayload(f"invalid JSON: {exc}") from exc
        _hex_ids_to_base64(document)
        try:
            json_format.ParseDict(document, message, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise BadPayload(str(exc)) from exc
        return message
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise BadPayload(f"invalid protobuf: {exc}") from exc
    return message


def spans_of(request: ExportTraceServiceRequest) -> Iterator[dict[str, Any]]:
    """Each span of an export request as a plain dict (ids in lowercase hex, times in nanoseconds)."""
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name", "unknown_service"))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex() or None,
                    "name": span.name,
                    "kind": _KIND_NAMES.get(span.kind, "UNSPECIFIED"),
                    "service": service,
                    "scope": scope_spans.scope.name,
                    "start_ns": span.start_time_unix_nano,
                    "end_ns": span.end_time_unix_nano,
                    "attributes": _attributes(span.attributes),
                    "events": [
                        {"name": e.name, "time_ns": e.time_unix_nano, "attributes": _attributes(e.attributes)}
                        for e in span.events
                    ],
                    "links": [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()} for link in span.links],
                    "status": {"code": _STATUS_NAMES.get(span.status.code, "UNSET"), "message": span.status.message},
                    "resource": resource,
                }


def metric_points_of(request: ExportMetricsServiceRequest) -> Iterator[dict[str, Any]]:
    """Each data point of an export request: name, service, attributes and its value (or histogram)."""
    for resource_metrics in request.resource_metrics:
        resource = _attributes(resource_metrics.resource.attributes)
        service = str(resource.get("service.name", "unknown_service"))
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                data = getattr(metric, kind)
                for point in data.data_points:
                    entry: dict[str, Any] = {
                        "name": metric.name,
                        "unit": metric.unit,
                        "type": kind,
                        "service": service,
                        "attributes": _attributes(point.attributes),
                        "time_ns": point.time_unix_nano,
                    }
                    if kind in ("gauge", "sum"):
                        entry["value"] = point.as_double if point.HasField("as_double") else point.as_int
                    elif kind in ("histogram", "exponential_histogram"):
                        entry["count"] = point.count
                        entry["sum"] = point.sum
                    yield entry


# ---------------------------------------------------------------------------------------------
# Zipkin


def to_zipkin(span: Mapping[str, Any]) -> dict[str, Any]:
    """One span in Zipkin's v2 JSON model, as the OpenTelemetry specification maps it.

    Zipkin has no links: each becomes an ``otel.link.N`` tag (``<trace id>-<span id>``), so a linked
    trace can still be looked up by id in the UI.
    """
    tags = {key: _tag(value) for key, value in span["attributes"].items()}
    scope = span.get("scope")
    if scope:
        tags["otel.scope.name"] = scope
    status = span["status"]
    if status["code"] != "UNSET":
        tags["otel.status_code"] = status["code"]
    if status["code"] == "ERROR":
        tags["error"] = status["message"] or "true"
    for index, link in enumerate(span["links"]):
        tags[f"otel.link.{index}"] = f"{link['trace_id']}-{link['span_id']}"
    start_us = span["start_ns"] // 1000
    zipkin: dict[str, Any] = {
        "traceId": span["trace_id"],
        "id": span["span_id"],
        "name": span["name"],
        "timestamp": start_us,
        "duration": max(1, span["end_ns"] // 1000 - start_us),
        "localEndpoint": {"serviceName": span["service"]},
        "tags": tags,
    }
    if span["parent_span_id"]:
        zipkin["parentId"] = span["parent_span_id"]
    if span["kind"] in _ZIPKIN_KINDS:
        zipkin["kind"] = span["kind"]
    peer = span["attributes"].get("rpc.service") or span["attributes"].get("messaging.destination.name")
    if span["kind"] in ("CLIENT", "PRODUCER") and peer:
        zipkin["remoteEndpoint"] = {"serviceName": str(peer)}
    if span["events"]:
        zipkin["annotations"] = [{"timestamp": e["time_ns"] // 1000, "value": e["name"]} for e in span["events"]]
    return zipkin


def _tag(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


class ZipkinForwarder:
    """Posts spans to Zipkin's ``/api/v2/spans`` from a thread of its own, so ingestion never waits.

    When Zipkin is down, batches are dropped (and counted): a tracing UI must not slow the services.
    """

    def __init__(self, base_url: str, max_queue: int = 1000, timeout_s: float = 5.0) -> None:
        self.url = base_url.rstrip("/") + "/api/v2/spans"
        self.timeout_s = timeout_s
        self._queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(max_queue)
        self._thread = threading.Thread(target=self._run, name="zipkin-forwarder", daemon=True)
        self.sent = 0
        self.dropped = 0

    def start(self) -> ZipkinForwarder:
        self._thread.start()
        return self

    def submit(self, spans: list[dict[str, Any]]) -> None:
        if not spans:
            return
        try:
            self._queue.put_nowait([to_zipkin(span) for span in spans])
        except queue.Full:
            self.dropped += len(spans)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(self.timeout_s + 1)

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            request = urllib.request.Request(  # noqa: S310 - the operator's Zipkin URL (loopback by default)
                self.url, data=json.dumps(batch).encode(), method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                    response.read()
                self.sent += len(batch)
            except (urllib.error.URLError, OSError) as exc:
                self.dropped += len(batch)
                log.warning("zipkin_forward_failed", url=self.url, spans=len(batch), error=str(exc))


# ---------------------------------------------------------------------------------------------
# the store and the HTTP server


@dataclass
class Store:
    """What arrived, newest last, bounded."""

    max_items: int = DEFAULT_MAX_ITEMS
    spans: deque[dict[str, Any]] = field(init=False)
    points: deque[dict[str, Any]] = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.spans = deque(maxlen=self.max_items)
        self.points = deque(maxlen=self.max_items)

    def add_spans(self, spans: Iterable[dict[str, Any]]) -> None:
        with self.lock:
            self.spans.extend(spans)

    def add_points(self, points: Iterable[dict[str, Any]]) -> None:
        with self.lock:
            self.points.extend(points)

    def find_spans(
        self,
        trace_id: str | None = None,
        service: str | None = None,
        name: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        with self.lock:
            spans = list(self.spans)
        return [
            s
            for s in spans
            if (trace_id is None or s["trace_id"] == trace_id.lower())
            and (service is None or s["service"] == service)
            and (name is None or s["name"] == name)
            and all(_tag(s["attributes"].get(k)) == v for k, v in (attributes or {}).items())
        ]

    def find_points(self, name: str | None = None, service: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            points = list(self.points)
        return [
            p for p in points if (name is None or p["name"] == name) and (service is None or p["service"] == service)
        ]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the exporters reuse their connection
    server: OtlpHttpServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return  # one line per export would drown the dev stack's log

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, document: Any) -> None:
        self._reply(status, json.dumps(document).encode(), "application/json")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
        return body

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        path = urlsplit(self.path).path
        content_type = self.headers.get("Content-Type") or "application/x-protobuf"
        try:
            body = self._body()
            if path == "/v1/traces":
                request = parse_request(body, content_type, ExportTraceServiceRequest())
                spans = list(spans_of(request))
                self.server.store.add_spans(spans)
                if self.server.forwarder is not None:
                    self.server.forwarder.submit(spans)
                response: Any = ExportTraceServiceResponse()
            elif path == "/v1/metrics":
                metrics_request = parse_request(body, content_type, ExportMetricsServiceRequest())
                self.server.store.add_points(metric_points_of(metrics_request))
                response = ExportMetricsServiceResponse()
            elif path == "/v1/logs":
                response = ExportTraceServiceResponse()  # an empty message is the same bytes for every signal
            else:
                self._json(404, {"error": "not_found", "detail": path})
                return
        except (BadPayload, OSError, zlib.error, EOFError) as exc:
            self._json(400, {"error": "bad_request", "detail": str(exc)[:500]})
            return
        if content_type.startswith("application/json"):
            self._reply(200, json_format.MessageToJson(response).encode(), "application/json")
        else:
            self._reply(200, response.SerializeToString(), "application/x-protobuf")

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/healthz":
            self._json(200, {"status": "ok"})
        elif url.path == "/spans":
            wanted = dict(item.split(":", 1) for item in parse_qs(url.query).get("attr", []) if ":" in item)
            spans = self.server.store.find_spans(query.get("trace_id"), query.get("service"), query.get("name"), wanted)
            self._json(200, {"spans": spans})
        elif url.path == "/metrics":
            self._json(200, {"points": self.server.store.find_points(query.get("name"), query.get("service"))})
        else:
            self._json(404, {"error": "not_found", "detail": url.path})


class OtlpHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: Store, forwarder: ZipkinForwarder | None) -> None:
        super().__init__(address, _Handler)
        self.store = store
        self.forwarder = forwarder


class OtlpReceiver:
    """The receiver in a background thread: ``with OtlpReceiver() as receiver: receiver.endpoint``."""

    def __init__(
        self,
        host: str = LOOPBACK,
        port: int = 0,
        zipkin_url: str | None = None,
        max_items: int = DEFAULT_MAX_ITEMS,
    ) -> None:
        self.store = Store(max_items)
        self.forwarder = ZipkinForwarder(zipkin_url) if zipkin_url else None
        self.server = OtlpHttpServer((host, port), self.store, self.forwarder)
        self._thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        """The base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OtlpReceiver:
        if self.forwarder is not None:
            self.forwarder.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.forwarder is not None:
            self.forwarder.stop()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m waitroom_devtools.otlp_receiver",
        description="Receive OTLP/HTTP traces and metrics, keep them in memory, optionally forward spans to Zipkin.",
    )
    parser.add_argument("--host", default=LOOPBACK, help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=4318, help="port (default: 4318, OTLP/HTTP's; 0: any free port)")
    parser.add_argument(
        "--zipkin-url", default=None, help="also post every span to this Zipkin (e.g. http://127.0.0.1:9411)"
    )
    parser.add_argument("--max-spans", type=int, default=DEFAULT_MAX_ITEMS, help="spans and points kept in memory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from waitroom_platform.logging import configure_logging

    args = _parse_args(argv)
    configure_logging(level="INFO", fmt="json", service="otlp-receiver")
    receiver = OtlpReceiver(args.host, args.port, args.zipkin_url, args.max_spans)

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    receiver.start()
    log.info("otlp_receiver_listening", endpoint=receiver.endpoint, zipkin=args.zipkin_url)
    sys.stdout.write(receiver.endpoint + "\n")
    sys.stdout.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
