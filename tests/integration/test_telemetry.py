"""Traces, metrics, HTTP endpoints and structured logs, against the real broker and daemon."""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from dockhand.worker.app import create_app
from dockhand.worker.settings import Settings
from dockhand.worker.telemetry import Telemetry

from .conftest import (
    AMQP_URL,
    REGISTRY_IMAGE,
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    TEST_LABEL,
    WorkerFactory,
    WorkerProcess,
    connect_client,
    remove_labelled,
)
from .dockerd2 import SecondDockerd

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class InProcessWorker:
    """The worker app inside the test process, so its spans can go to an in-memory exporter."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = InMemoryMetricReader()
        self.telemetry = Telemetry(settings.host_id, tracer_provider, MeterProvider(metric_readers=[self.metrics]))
        self.app = create_app(settings, self.telemetry)

    async def __aenter__(self) -> InProcessWorker:
        self._lifespan = self.app.lifespan_context()
        await self._lifespan.__aenter__()
        await self.app.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.app.stop()
        await self._lifespan.__aexit__(None, None, None)


@pytest.fixture
async def in_process(session_id: str, tmp_path: Path) -> AsyncIterator[InProcessWorker]:
    host_id = f"t{session_id}-otel"
    settings = Settings(
        amqp_url=AMQP_URL,
        host_id=host_id,
        exchange_prefix=f"dhtest-{session_id}",
        default_network=f"dhtest-{session_id}",
        state_dir=tmp_path / "state",
        http_enabled=False,
        delivery_limit=3,  # as the session's other workers: the shared `any` queue must agree
    )
    try:
        async with InProcessWorker(settings) as worker:
            yield worker
    finally:
        remove_labelled(f"dockhand.host={host_id}")
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(f"dhtest-{session_id}.commands.{host_id}")


async def _send_traced(
    settings: Settings | WorkerProcess, command: dict[str, Any]
) -> aio_pika.abc.AbstractIncomingMessage:
    """Publish with a known traceparent; return the raw reply (headers included)."""
    prefix = settings.exchange_prefix if isinstance(settings, Settings) else settings.prefix
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        exchange = await channel.get_exchange(f"{prefix}.commands", ensure=False)
        await exchange.publish(
            aio_pika.Message(
                json.dumps(command).encode(),
                reply_to=replies.name,
                correlation_id=command["command_id"],
                headers={"traceparent": TRACEPARENT},
            ),
            routing_key=f"{settings.host_id}.{command['type']}",
        )
        async with replies.iterator(timeout=60) as messages:
            async for message in messages:
                await message.ack()
                return message
    raise AssertionError("no reply")


async def test_trace_continues_from_traceparent_through_docker_calls_into_the_result(
    in_process: InProcessWorker, test_image: str
) -> None:
    ws = f"t{secrets.token_hex(3)}-otel"
    secret_env = f"hunter2-{secrets.token_hex(4)}"
    command = {
        "command_id": f"otel-{ws}",
        "type": "workspace.create",
        "payload": {
            "workspace_id": ws,
            "image": REGISTRY_IMAGE,
            "pull": "always",
            "registry_auth": {"username": REGISTRY_USER, "password": REGISTRY_PASSWORD},
            "env": {"SECRET": secret_env},
            "labels": {TEST_LABEL: "otel"},
        },
    }
    reply = await _send_traced(in_process.settings, command)
    assert json.loads(reply.body)["status"] == "succeeded", reply.body
    # The result carries the trace onward.
    assert TRACE_ID in str((reply.headers or {}).get("traceparent"))
    await asyncio.sleep(0.2)

    spans = [s for s in in_process.spans.get_finished_spans() if format(s.context.trace_id, "032x") == TRACE_ID]
    by_name = {s.name: s for s in spans}
    consumers = [s for s in spans if s.kind is SpanKind.CONSUMER]
    assert consumers, [s.name for s in spans]
    command_span = by_name["dockhand workspace.create"]
    assert command_span.parent is not None
    assert command_span.parent.span_id == consumers[0].context.span_id
    assert command_span.attributes["dockhand.workspace_id"] == ws
    assert command_span.attributes["dockhand.status"] == "succeeded"
    docker_spans = [s for s in spans if s.kind is SpanKind.CLIENT and s.name.startswith("docker ")]
    names = {s.name for s in docker_spans}
    assert {"docker image.pull", "docker container.create", "docker container.start"} <= names, names
    assert all(s.parent is not None and s.parent.span_id == command_span.context.span_id for s in docker_spans)
    assert all(s.attributes["dockhand.host_id"] == in_process.settings.host_id for s in docker_spans)
    producers = [s for s in spans if s.kind is SpanKind.PRODUCER]
    assert producers, "the result publish is traced"
    # No credentials and no environment values anywhere in any span.
    everything = json.dumps([dict(s.attributes or {}) for s in in_process.spans.get_finished_spans()])
    assert REGISTRY_PASSWORD not in everything
    assert secret_env not in everything

    # Metrics: commands by type and status, command and Docker call durations.
    data = in_process.metrics.get_metrics_data()
    points = {
        metric.name: [dict(p.attributes or {}) for p in metric.data.data_points]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert {"type": "workspace.create", "status": "succeeded"} in points["dockhand.commands"]
    assert {"type": "workspace.create"} in points["dockhand.command.duration"]
    assert {"operation": "container.create"} in points["dockhand.docker.call.duration"]
    assert "dockhand.commands.in_flight" in points


async def test_a_worker_that_records_no_spans_still_carries_the_trace_on(worker: WorkerProcess) -> None:
    """Without an exporter the worker skips FastStream's span middleware (its cost is a sixth of
    a cheap command's CPU), but an incoming traceparent still reaches the result's headers; a
    command without one gets none made up."""
    traced = await _send_traced(worker, {"command_id": f"trace-{secrets.token_hex(4)}", "type": "host.info"})
    assert json.loads(traced.body)["status"] == "succeeded"
    header = str((traced.headers or {}).get("traceparent"))
    assert header.startswith(f"00-{TRACE_ID}-"), traced.headers
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        exchange = await channel.get_exchange(f"{worker.prefix}.commands", ensure=False)
        body = {"command_id": f"untraced-{secrets.token_hex(4)}", "type": "host.info"}
        await exchange.publish(
            aio_pika.Message(json.dumps(body).encode(), reply_to=replies.name, correlation_id="untraced"),
            routing_key=f"{worker.host_id}.host.info",
        )
        async with replies.iterator(timeout=60) as messages:
            async for message in messages:
                await message.ack()
                assert "traceparent" not in (message.headers or {})
                break


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback test URL
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.slow
async def test_http_endpoints_metrics_and_readiness(workers: WorkerFactory, session_id: str, tmp_path: Path) -> None:
    with SecondDockerd(tmp_path / "d", name=f"dho{secrets.token_hex(2)}") as daemon:
        worker = await asyncio.to_thread(
            workers.start,
            "http",
            DOCKHAND_DOCKER_HOST=daemon.url,
            DOCKHAND_HEALTH_INTERVAL_S="1",
            DOCKHAND_LOG_JSON="true",
        )
        try:
            base = worker.http_url
            assert await asyncio.to_thread(_get, f"{base}/healthz") == (200, '{"status": "alive"}')
            for _ in range(50):  # the leader lock (and with it the consumers) follows the ready line
                status, body = await asyncio.to_thread(_get, f"{base}/readyz")
                if json.loads(body).get("consuming"):
                    break
                await asyncio.sleep(0.1)
            assert status == 200, body
            assert json.loads(body) == {
                "ready": True,
                "broker": True,
                "docker": True,
                "consumers": True,
                "node": "localhost:5672",
                "consuming": True,
            }

            async with connect_client(worker, session_id) as client:
                for _ in range(3):
                    assert (await client.send("host.info"))["status"] == "succeeded"
                # With a traceparent, so the log line can name the trace.
                body = client.command("workspace.inspect", {"workspace_id": "nope"})
                missing = await client.reply(
                    await client.publish(
                        body, f"{worker.host_id}.workspace.inspect", headers={"traceparent": TRACEPARENT}
                    )
                )
                assert missing["status"] == "failed"
            status, metrics = await asyncio.to_thread(_get, f"{base}/metrics")
            assert status == 200
            samples = {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("dockhand_commands_total{")
            }

            def count(status: str, command_type: str) -> float:
                return sum(v for k, v in samples.items() if f'status="{status}"' in k and f'type="{command_type}"' in k)

            assert count("succeeded", "host.info") == 3, samples
            assert count("failed", "workspace.inspect") == 1, samples
            assert "dockhand_docker_call_duration_seconds_bucket" in metrics
            assert "dockhand_commands_in_flight" in metrics

            # Structured logs: one JSON object per line with the ids.
            outcome = next(
                json.loads(line)
                for line in worker.log().splitlines()
                if line.startswith("{") and '"workspace.inspect' in line
            )
            assert outcome["command_id"] == missing["command_id"]
            assert outcome["workspace_id"] == "nope"
            assert outcome["host_id"] == worker.host_id
            assert outcome["status"] == "failed"
            assert outcome["trace_id"] == TRACE_ID  # carried on even with no exporter configured

            await asyncio.to_thread(daemon.stop)
            for _ in range(50):
                status, body = await asyncio.to_thread(_get, f"{base}/readyz")
                if status == 503:
                    break
                await asyncio.sleep(0.2)
            assert status == 503, body
            assert json.loads(body)["docker"] is False
            await asyncio.to_thread(daemon.start)
            for _ in range(50):
                status, body = await asyncio.to_thread(_get, f"{base}/readyz")
                if status == 200:
                    break
                await asyncio.sleep(0.2)
            assert status == 200, body
        finally:
            await asyncio.to_thread(worker.stop)
