"""RabbitMQ restarted under a running worker (a second broker node of the test's own, so the
shared one is never disturbed): the worker reconnects, consumes again, keeps its topology, and
the events of the outage reach consumers afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import aio_pika
import aiodocker
import pytest

from .conftest import TEST_IMAGE, TEST_LABEL, WorkerFactory, connect_client
from .rabbit2 import SecondRabbit

pytestmark = pytest.mark.slow


async def _durable_events_queue(url: str, prefix: str, name: str) -> None:
    """A durable queue on the events exchange, so messages published around the restart wait
    for us (an exclusive queue would vanish with the broker)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(f"{prefix}.events", aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(name, durable=True)
        await queue.bind(exchange, routing_key="#")


async def _drain(url: str, name: str) -> list[tuple[str, dict[str, object]]]:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(name, ensure=False)
        out = []
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            out.append((message.routing_key or "", json.loads(message.body)))
        return out


async def test_worker_survives_a_broker_restart(
    workers: WorkerFactory, session_id: str, tmp_path: Path, docker: aiodocker.Docker
) -> None:
    with SecondRabbit(tmp_path / "rabbit") as rabbit:
        worker = await asyncio.to_thread(workers.start, "brk", DOCKHAND_AMQP_URL=rabbit.url)
        domain = f"outage-{session_id}.example.test"
        container = None
        try:
            await _durable_events_queue(rabbit.url, worker.prefix, f"{worker.prefix}.outage-events")
            async with connect_client(worker, session_id, amqp_url=rabbit.url) as client:
                assert (await client.send("host.info"))["status"] == "succeeded"
            await asyncio.sleep(4)  # past RabbitMQ 3.10's window for fresh quorum queues (see rabbit2.py)

            await asyncio.to_thread(rabbit.stop)
            # An event while the broker is away: the worker must hold on to it.
            container = await docker.containers.create(
                {
                    "Image": TEST_IMAGE,
                    "Labels": {
                        TEST_LABEL: session_id,
                        "dockhand.enabled": "true",
                        "dockhand.domain": domain,
                        "dockhand.port": "8080",
                    },
                }
            )
            await container.start()
            await asyncio.sleep(1)
            await asyncio.to_thread(rabbit.start)
            restarted = time.monotonic()

            # It consumes again by itself (no restart of the worker), with its bindings intact.
            async with connect_client(worker, session_id, amqp_url=rabbit.url) as client:
                reply = await client.send("host.info", timeout=60)
                assert reply["status"] == "succeeded"
                everywhere = await client.send("host.info", target="all", timeout=30)
                assert everywhere["host_id"] == worker.host_id
            took = time.monotonic() - restarted

            # The outage's event arrived after the reconnect: from the buffer, or covered by a
            # resync snapshot.
            deadline = time.monotonic() + 30
            found: list[str] = []
            while time.monotonic() < deadline and not found:
                for key, body in await _drain(rabbit.url, f"{worker.prefix}.outage-events"):
                    service = body.get("service") or {}
                    services = body.get("services") or []
                    if (key.endswith("discovery.added") and service.get("domain") == domain) or any(
                        s.get("domain") == domain for s in services
                    ):
                        found.append(key)
                await asyncio.sleep(0.5)
            assert found, "the event from the outage never reached the events exchange"
            assert worker.proc.poll() is None
            print(
                f"\nbroker restart: answered again {took:.1f} s after the broker was back; outage event via {found[0]}"
            )
        finally:
            if container is not None:
                with contextlib.suppress(aiodocker.DockerError):
                    await container.delete(force=True)
            await asyncio.to_thread(worker.stop)
