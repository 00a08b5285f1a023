"""structlog JSON logging and OpenTelemetry tracing, with trace context carried in NATS headers.

Tracing is paid for only when it is used: with no exporter configured, no span is created at all;
with one, a parent-based ratio sampler (``REMITS_TRACE_SAMPLE_RATIO``, default 1 %) picks the
traces at the gateway, and the stages open spans only for messages whose ``traceparent`` says
"sampled". Unsampled messages carry no trace headers, so they cost the stages nothing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import (
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)

_configured_logging = False


def configure_logging(level: str | None = None) -> None:
    global _configured_logging
    if _configured_logging:
        return
    _configured_logging = True
    level_name = (level or os.environ.get("REMITS_LOG_LEVEL", "info")).upper()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans as JSON lines: lets separate worker processes share one trace file."""

    def __init__(self, path: str) -> None:
        self._path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self._path, "a", encoding="utf-8") as out:
            for span in spans:
                ctx = span.get_span_context()
                parent = span.parent.span_id if span.parent else None
                out.write(
                    json.dumps(
                        {
                            "name": span.name,
                            "trace_id": f"{ctx.trace_id:032x}",
                            "span_id": f"{ctx.span_id:016x}",
                            "parent_id": f"{parent:016x}" if parent else None,
                            "attributes": dict(span.attributes or {}),
                            "start": span.start_time,
                            "end": span.end_time,
                        }
                    )
                    + "\n"
                )
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


DEFAULT_SAMPLE_RATIO = 0.01


class AdjustableRatioSampler(Sampler):
    """Parent-based ratio sampling whose ratio can change while tracers exist (tests, operators)."""

    def __init__(self, ratio: float) -> None:
        self.set_ratio(ratio)

    def set_ratio(self, ratio: float) -> None:
        self.ratio = min(1.0, max(0.0, ratio))
        self._delegate = ParentBased(TraceIdRatioBased(self.ratio))

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return self._delegate.should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return f"AdjustableRatioSampler({self.ratio})"


_provider: TracerProvider | None = None
_sampler: AdjustableRatioSampler | None = None
_tracer: trace.Tracer | None = None
# True once a span processor is installed: only then are spans worth creating.
_exporting = False


def _env_ratio() -> float:
    try:
        return float(os.environ.get("REMITS_TRACE_SAMPLE_RATIO", DEFAULT_SAMPLE_RATIO))
    except ValueError:
        return DEFAULT_SAMPLE_RATIO


def otlp_exporter() -> SpanExporter | None:
    """OTLP over HTTP (protobuf) when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces-only
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set; the exporter reads the standard OTEL_*
    variables itself (headers, timeout, certificate)."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def configure_tracing(
    service_name: str = "remits", exporter: SpanExporter | None = None, sample_ratio: float | None = None
) -> TracerProvider:
    """Install a tracer provider once. ``REMITS_TRACE_FILE`` selects the JSON-lines exporter,
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` the OTLP/HTTP one (both may be set);
    ``exporter`` adds one (tests); ``sample_ratio`` overrides ``REMITS_TRACE_SAMPLE_RATIO``."""
    global _provider, _sampler, _exporting
    if _provider is None:
        _sampler = AdjustableRatioSampler(_env_ratio())
        _provider = TracerProvider(resource=Resource.create({"service.name": service_name}), sampler=_sampler)
        trace.set_tracer_provider(_provider)
        path = os.environ.get("REMITS_TRACE_FILE")
        if path:
            _provider.add_span_processor(BatchSpanProcessor(JsonLinesSpanExporter(path)))
            _exporting = True
        otlp = otlp_exporter()
        if otlp is not None:
            _provider.add_span_processor(BatchSpanProcessor(otlp))
            _exporting = True
    if exporter is not None:
        _provider.add_span_processor(SimpleSpanProcessor(exporter))
        _exporting = True
    if sample_ratio is not None and _sampler is not None:
        _sampler.set_ratio(sample_ratio)
    return _provider


def tracing_enabled() -> bool:
    return _exporting


def tracer() -> trace.Tracer:
    global _tracer
    if _tracer is None:
        _tracer = trace.get_tracer("remits")
    return _tracer


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Adds the current trace context, but only for a sampled span: an unsampled request carries
    no trace headers, so no later stage spends anything on it."""
    if _exporting and trace.get_current_span().get_span_context().trace_flags.sampled:
        propagate.inject(headers)
    return headers


def is_sampled(headers: Mapping[str, str] | None) -> bool:
    """Whether a message's W3C traceparent asks for a span (the sampled flag), read without parsing."""
    if not _exporting or not headers:
        return False
    traceparent = headers.get("traceparent")
    if not traceparent or len(traceparent) < 2:
        return False
    try:
        return bool(int(traceparent[-2:], 16) & 0x01)  # bit 0 of the flags; others (e.g. "random") vary
    except ValueError:
        return False


def extract_context(headers: Mapping[str, str] | None) -> otel_context.Context:
    return propagate.extract(dict(headers or {}))
