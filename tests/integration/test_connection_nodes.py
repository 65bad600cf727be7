"""Several broker nodes and the consumer watchdog against the real broker (issue 12).

The faults of a real 3-node cluster are in tests/cluster/ (marker ``cluster``); here: a worker
given a node list whose other entry is dead starts, says which node it is on and that it consumes
(readiness and heartbeat); a worker whose queue the broker deletes (``basic.cancel``) consumes
again; and the watchdog re-creates a FastStream consumer lost behind the library's back.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from typing import Any

import aio_pika
import aiohttp
from faststream.rabbit import QueueType, RabbitQueue

from dockhand.worker.connection import MultiNodeBroker
from dockhand.worker.watchdog import ConsumerWatchdog, subscription_state

from .conftest import AMQP_URL, WorkerFactory, WorkerProcess, connect_client, listen


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def readiness(worker: WorkerProcess) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        http.get(worker.http_url + "/readyz") as response,
    ):
        body: dict[str, Any] = await response.json()
        return body


async def ready_consuming(worker: WorkerProcess, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = await readiness(worker)
        if body.get("consuming") and body.get("ready"):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"not consuming within {timeout} s: {body}\n{worker.log()[-3000:]}")


async def test_a_worker_given_a_dead_node_and_a_live_one_runs_on_the_live_one(
    workers: WorkerFactory, session_id: str
) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{closed_port()}/"
    async with listen(workers.prefix) as events:
        worker = workers.start("nodes", DOCKHAND_AMQP_URL=f"{dead},{AMQP_URL}", DOCKHAND_HEALTH_INTERVAL_S="1")
        try:
            body = await ready_consuming(worker)
            assert body["node"] == "localhost:5672"
            async with connect_client(worker, session_id) as client:
                reply = await client.send("discovery.list")
            assert reply["status"] == "succeeded"
            beats = await events.wait_for(
                f"{worker.host_id}.heartbeat", lambda b: (b.get("broker") or {}).get("consuming") is True
            )
            assert beats[-1]["broker"] == {"node": "localhost:5672", "consuming": True}
        finally:
            worker.stop()  # not left consuming the session's `any` queue


async def test_a_worker_whose_queue_the_broker_deletes_consumes_again(workers: WorkerFactory, session_id: str) -> None:
    worker = workers.start("cancelled")
    try:
        await _consumes_again_after_its_queue_is_deleted(worker, session_id)
    finally:
        worker.stop()  # not left consuming the session's `any` queue


async def _consumes_again_after_its_queue_is_deleted(worker: WorkerProcess, session_id: str) -> None:
    await ready_consuming(worker)
    queue = f"{worker.prefix}.commands.{worker.host_id}"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)  # RabbitMQ sends basic.cancel to the worker's consumer
    async with connect_client(worker, session_id) as client:
        deadline = time.monotonic() + 20
        while True:
            # The queue comes back with the consumer (and with it the `<host>.#` binding).
            try:
                reply = await client.send("discovery.list", timeout=2)
                break
            except Exception:
                assert time.monotonic() < deadline, f"no consumer again within 20 s:\n{worker.log()[-3000:]}"
                await asyncio.sleep(0.5)
    assert reply["status"] == "succeeded"
    assert (await ready_consuming(worker))["consumers"] is True


async def test_the_watchdog_recreates_a_consumer_lost_behind_faststreams_back() -> None:
    # A consumer gone without a basic.cancel that aio-pika would act on (as in faststream #2758):
    # cancelled on aiormq's channel directly, so neither aio-pika nor FastStream knows.
    broker = MultiNodeBroker(f"amqp://guest:guest@127.0.0.1:{closed_port()}/,{AMQP_URL}")
    name = f"dhtest-watchdog-{uuid.uuid4().hex[:8]}"
    got: list[str] = []
    subscriber = broker.subscriber(RabbitQueue(name, queue_type=QueueType.QUORUM, durable=True))

    @subscriber
    async def handle(body: str) -> None:
        got.append(body)

    await broker.start()
    try:
        watchdog = ConsumerWatchdog(lambda: broker.subscribers, lambda: True, lambda: broker.node is not None)
        assert watchdog.consuming, watchdog.states()
        tag = subscriber._consumer_tag
        assert tag is not None
        underlay = subscriber._queue_obj.channel._channel.channel  # type: ignore[union-attr]
        await underlay.basic_cancel(tag)
        assert subscription_state(subscriber).reason == "consumer cancelled by the broker"
        await broker.publish("while lost", name)
        await asyncio.sleep(0.5)
        assert got == [], "nothing consumes the queue now"
        assert await watchdog.check() == 0
        assert await watchdog.check() == 1
        async with asyncio.timeout(10):
            while got != ["while lost"]:
                await asyncio.sleep(0.05)
        assert watchdog.consuming
    finally:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(name)
        await broker.stop()
