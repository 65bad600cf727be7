"""OpenTelemetry traces and metrics, and their Prometheus text form.

Providers are passed in explicitly (tests give an in-memory exporter); :func:`from_environment`
builds them from the standard ``OTEL_*`` variables. Span and metric names are low-cardinality;
ids go into attributes, and never credentials or environment values.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from faststream import BaseMiddleware
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import __version__
from .settings import Settings

log = logging.getLogger("dockhand.telemetry")

_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Telemetry:
    """The worker's tracer and instruments."""

    def __init__(
        self,
        host_id: str,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.host_id = host_id
        self.tracer_provider = tracer_provider or trace.NoOpTracerProvider()
        self.meter_provider = meter_provider or metrics.NoOpMeterProvider()
        self.tracer = self.tracer_provider.get_tracer("dockhand", __version__)
        meter = self.meter_provider.get_meter("dockhand", __version__)
        self.commands = meter.create_counter(
            "dockhand.commands", unit="{command}", description="Commands by type and status"
        )
        self.command_duration = meter.create_histogram(
            "dockhand.command.duration",
            unit="s",
            description="Command execution time",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.docker_duration = meter.create_histogram(
            "dockhand.docker.call.duration",
            unit="s",
            description="Docker API call time by operation",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.events = meter.create_counter(
            "dockhand.events.published", unit="{event}", description="Events published by type"
        )
        self.broker_reconnects = meter.create_counter(
            "dockhand.broker.reconnects", unit="{reconnect}", description="Broker connection re-established"
        )
        self._meter = meter
        self._owned: list[Any] = []
        self.records_spans = not isinstance(self.tracer_provider, trace.NoOpTracerProvider)
        """Whether spans are recorded (something exports them), not only the context carried on."""

    def observe(self, name: str, description: str, unit: str, read: Callable[[], float | None]) -> None:
        """An observable gauge read at collection time (in-flight commands, event lag)."""

        def callback(_: CallbackOptions) -> Iterator[Observation]:
            value = read()
            if value is not None:
                yield Observation(value)

        self._meter.create_observable_gauge(name, callbacks=[callback], unit=unit, description=description)

    @contextlib.contextmanager
    def docker_call(self, operation: str, subject: str) -> Iterator[None]:
        """A CLIENT span ``docker <operation>`` and its duration metric."""
        began = time.perf_counter()
        if not self.records_spans:  # the duration only: a no-op span would still cost its context switch
            try:
                yield
            finally:
                self.docker_duration.record(time.perf_counter() - began, {"operation": operation})
            return
        with self.tracer.start_as_current_span(
            f"docker {operation}",
            kind=SpanKind.CLIENT,
            attributes={"docker.operation": operation, "docker.subject": subject, "dockhand.host_id": self.host_id},
        ) as span:
            try:
                yield
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                self.docker_duration.record(time.perf_counter() - began, {"operation": operation})

    def own(self, resource: Any) -> None:
        """Shut this down with the worker (span processors, metric readers)."""
        self._owned.append(resource)

    def shutdown(self) -> None:
        for resource in self._owned:
            with contextlib.suppress(Exception):
                resource.shutdown()


_TRACE_CONTEXT = TraceContextTextMapPropagator()


class TraceContextOnly(BaseMiddleware):
    """FastStream middleware for a worker whose spans nobody records: it carries an incoming
    ``traceparent`` on (into the command's context, and from there into the headers of what
    it publishes) without making spans or FastStream's messaging metrics.

    FastStream's telemetry middleware costs about a sixth of the worker's CPU per command
    (a CONSUMER and two PRODUCER spans, their attributes, a metric per message), even with a
    no-op tracer; our own ``dockhand.*`` metrics stay either way.
    """

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        headers = msg.headers
        if not headers or "traceparent" not in headers:
            return await call_next(msg)
        token = otel_context.attach(_TRACE_CONTEXT.extract(headers))
        try:
            return await call_next(msg)
        finally:
            otel_context.detach(token)

    async def publish_scope(self, call_next: Any, cmd: Any) -> Any:
        carry_trace(cmd.headers)
        return await call_next(cmd)


def carry_trace(headers: dict[str, Any]) -> None:
    """Put the current trace context (``traceparent``) into ``headers``, when there is one."""
    if trace.get_current_span().get_span_context().is_valid:
        _TRACE_CONTEXT.inject(headers)


def broker_middlewares(telemetry: Telemetry) -> list[Any]:
    """The broker's middlewares: FastStream's telemetry when spans are recorded, else only the
    trace context carried on (:class:`TraceContextOnly`)."""
    if not telemetry.records_spans:
        return [TraceContextOnly]
    from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware

    return [
        RabbitTelemetryMiddleware(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    ]


def _otlp_exporters() -> tuple[SpanExporter | None, MetricReader | None]:
    """OTLP exporters when an endpoint is configured and the optional extra is installed."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None, None
    try:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the 'otlp' extra is not installed: pip install 'dockhand[otlp]'"
        )
        return None, None
    return OTLPSpanExporter(), PeriodicExportingMetricReader(OTLPMetricExporter())


def from_environment(settings: Settings) -> Telemetry:
    """Providers from ``OTEL_*``: OTLP when an endpoint is set, console spans with
    ``OTEL_TRACES_EXPORTER=console``, Prometheus metrics always (``/metrics``);
    ``OTEL_SDK_DISABLED=true`` turns tracing off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return Telemetry(settings.host_id)
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", "dockhand"),
            "service.version": __version__,
            "service.instance.id": settings.effective_worker_id,
            "dockhand.host_id": settings.host_id,
        }
    )
    span_exporter, metric_reader = _otlp_exporters()
    prometheus = PrometheusMetricReader()
    readers: list[MetricReader] = [prometheus] + ([metric_reader] if metric_reader else [])
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    console = os.environ.get("OTEL_TRACES_EXPORTER", "").lower() == "console"
    if span_exporter is None and not console:
        # Nothing would export a span: the no-op tracer still carries an incoming traceparent
        # on to the result, without the cost of recording spans nobody reads.
        telemetry = Telemetry(settings.host_id, None, meter_provider)
        telemetry.own(meter_provider)
        return telemetry
    tracer_provider = TracerProvider(resource=resource)
    if span_exporter is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    if console:
        tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    telemetry = Telemetry(settings.host_id, tracer_provider, meter_provider)
    telemetry.own(tracer_provider)
    telemetry.own(meter_provider)
    return telemetry


def prometheus_text() -> bytes:
    """The Prometheus exposition text of everything registered (the ``/metrics`` body)."""
    from prometheus_client import REGISTRY, generate_latest

    return generate_latest(REGISTRY)
