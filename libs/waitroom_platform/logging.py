"""Structured logging: one JSON object a line on stderr (or a console line with
``WAITROOM_LOG_FORMAT=console``), each with the service's name, the time, the level and, inside a
span, the trace and span ids, so a log line leads to its trace. Library loggers (aiokafka, uvicorn,
faust) go through the standard library at WARNING and above."""

from __future__ import annotations

import logging
import sys

import structlog
from opentelemetry import trace


def add_trace_context(_: object, __: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    """Put the current trace and span ids on every log line, so logs and traces join up."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "json", service: str = "waitroom") -> None:
    renderer: structlog.types.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            add_trace_context,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries (aiokafka, uvicorn) log through the standard library: keep their warnings only.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
