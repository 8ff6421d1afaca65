"""OpenTelemetry set-up, called once by each service's composition root (never at import time).

Configured by the standard environment variables:

- ``OTEL_SDK_DISABLED=true``: nothing is exported.
- ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: ``otlp``, ``console`` or ``none`` (a comma list
  is allowed). Unset: ``otlp`` when an OTLP endpoint is configured, else ``none``.
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: the SDK's sampler; for a crowd,
  ``parentbased_traceidratio`` with a ratio such as ``0.01`` keeps one trace in a hundred (a request
  that arrives with a sampled ``traceparent`` is always kept). Default: every trace.

**Nothing per request when nothing is exported.** Without a span exporter no SDK tracer provider is
installed (every span is the API's no-op), and without any trace or metric exporter the HTTP
instrumentation is not installed either (``instrument_fastapi`` does nothing): the service's own
numbers stay on ``/metrics``, the per-request ``http.server.*`` metrics and spans need an exporter.
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the per-signal ``..._TRACES_ENDPOINT``/``..._METRICS_ENDPOINT``)
  and ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``http/protobuf`` (default) or ``grpc``; headers, timeouts,
  certificates: the exporters read their own ``OTEL_EXPORTER_OTLP_*`` variables.
- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``: the resource (default name ``waitroom-<service>``).
- ``OTEL_METRIC_EXPORT_INTERVAL``: milliseconds between metric exports (SDK default 60 000).

Whatever the exporters, every metric is also readable in the Prometheus text format on the
service's health port (``/metrics``): the OpenTelemetry Prometheus reader feeds
``prometheus_client``'s registry, which the health server renders when scraped (nothing is
computed between scrapes).

Library code (Kafka helpers, handlers) uses only the OpenTelemetry API: without this set-up every
span is a no-op.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace

CONSOLE_INTERVAL_MS = 60_000


@dataclass
class Telemetry:
    service_name: str
    span_exporters: list[str] = field(default_factory=list)
    metric_exporters: list[str] = field(default_factory=list)
    _providers: list[Any] = field(default_factory=list)

    @property
    def exporting(self) -> bool:
        return bool(self.span_exporters or self.metric_exporters)

    def shutdown(self) -> None:
        """Flush what is buffered; call on the way out."""
        for provider in self._providers:
            provider.shutdown()


def _exporter_names(variable: str, signal: str) -> list[str]:
    configured = os.environ.get(variable)
    if configured is not None:
        return [name.strip().lower() for name in configured.split(",") if name.strip()]
    has_endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"
    )
    return ["otlp"] if has_endpoint else ["none"]


def _protocol(signal: str) -> str:
    return (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )


def _span_exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n")
    if name == "otlp":
        if _protocol("TRACES") == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

            return GrpcExporter()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise ValueError(f"unknown OTEL_TRACES_EXPORTER {name!r} (otlp, console or none)")


def _metric_reader(name: str) -> Any:
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

    if name == "console":
        interval = int(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", CONSOLE_INTERVAL_MS))
        exporter = ConsoleMetricExporter(out=sys.stderr, formatter=lambda m: m.to_json(indent=None) + "\n")
        return PeriodicExportingMetricReader(exporter, export_interval_millis=interval)
    if name == "otlp":
        if _protocol("METRICS") == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics

            return PeriodicExportingMetricReader(GrpcMetrics())
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics

        return PeriodicExportingMetricReader(HttpMetrics())
    raise ValueError(f"unknown OTEL_METRICS_EXPORTER {name!r} (otlp, console or none)")


def _prometheus_reader() -> Any:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    return PrometheusMetricReader()


#: what ``setup_telemetry`` installed in this process (None: not called, nothing exported)
_current: Telemetry | None = None


def setup_telemetry(service: str) -> Telemetry:
    """Install the tracer and meter providers for this process."""
    global _current
    name = os.environ.get("OTEL_SERVICE_NAME") or f"waitroom-{service}"
    telemetry = _current = Telemetry(service_name=name)
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return telemetry

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": name, "service.namespace": "waitroom"})

    span_exporters = [n for n in _exporter_names("OTEL_TRACES_EXPORTER", "TRACES") if n != "none"]
    if span_exporters:
        # The SDK reads OTEL_TRACES_SAMPLER(_ARG) itself.
        tracer_provider = TracerProvider(resource=resource)
        for exporter_name in span_exporters:
            tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(exporter_name)))
            telemetry.span_exporters.append(exporter_name)
        trace.set_tracer_provider(tracer_provider)
        telemetry._providers.append(tracer_provider)

    readers = [_metric_reader(n) for n in _exporter_names("OTEL_METRICS_EXPORTER", "METRICS") if n != "none"]
    readers.append(_prometheus_reader())
    telemetry.metric_exporters = [n for n in _exporter_names("OTEL_METRICS_EXPORTER", "METRICS") if n != "none"]
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(meter_provider)
    telemetry._providers.append(meter_provider)
    return telemetry


def tracing() -> bool:
    """Whether spans made here can go anywhere: false only once ``setup_telemetry`` ran and set up
    no span exporter, so a hot path can skip work whose only reader is a span (setting attributes on
    the current span is itself a context lookup per call)."""
    return _current is None or bool(_current.span_exporters)


def instrument_fastapi(app: Any, excluded_urls: Sequence[str] = ("/healthz", "/readyz")) -> bool:
    """Server spans and ``http.server`` metrics for every request, health checks excluded; nothing
    (no middleware at all) when this process exports neither traces nor metrics. Whether it
    instrumented the app."""
    if _current is None or not _current.exporting:
        return False
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # The ASGI receive/send sub-spans ("http send" per body chunk) say nothing an operator needs.
    FastAPIInstrumentor.instrument_app(app, excluded_urls=",".join(excluded_urls), exclude_spans=["receive", "send"])
    return True


def instrument_botocore() -> None:
    """Client spans for every AWS call (CloudWatch, SNS)."""
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor

    BotocoreInstrumentor().instrument()
