"""The second-RabbitMQ harness (``rabbit2.py``): durable data across a clean restart and a SIGKILL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from .conftest import AMQP_URL
from .rabbit2 import SecondRabbit, epmd_names

QUEUE = "dh-rabbit2-quorum"
QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


async def _publish(url: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel()  # publisher confirms: each publish waits for the ack
        await channel.declare_queue(QUEUE, durable=True, arguments=QUORUM)
        for body in bodies:
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, routing_key=QUEUE)


async def _get(url: str, count: int, timeout: float = 30) -> list[bytes]:
    """Read and ack ``count`` messages; retries while the quorum queue elects its leader after a start."""
    bodies: list[bytes] = []
    deadline = time.monotonic() + timeout
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(QUEUE, passive=True)
        while len(bodies) < count and time.monotonic() < deadline:
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                await asyncio.sleep(0.1)
                continue
            bodies.append(message.body)
            await message.ack()
    return bodies


async def _message_count(url: str, expect: int, timeout: float = 30) -> int | None:
    """The queue's message count once it equals ``expect`` (or the last one seen after ``timeout``):
    right after a start a quorum queue reports 0 until its Ra member has recovered its log."""
    deadline = time.monotonic() + timeout
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        while True:
            queue = await channel.declare_queue(QUEUE, passive=True)  # fails if the queue is gone
            count = queue.declaration_result.message_count
            if count == expect or time.monotonic() >= deadline:
                return count
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_second_rabbit_restart_and_kill(tmp_path: Path) -> None:
    primary_before = (epmd_names() or {}).get("rabbit")
    rabbit = SecondRabbit(tmp_path / "rabbit2")
    try:
        await asyncio.to_thread(rabbit.start)
        first_start = rabbit.last_start_seconds or 0.0
        port = rabbit.port
        assert rabbit.url == f"amqp://guest:guest@127.0.0.1:{port}/"
        assert port != 5672
        await _publish(rabbit.url, [b"one", b"two", b"three"])

        # A clean restart: same data dir and port, the persistent messages are still there.
        t0 = time.monotonic()
        await asyncio.to_thread(rabbit.restart)
        restart, stop = time.monotonic() - t0, rabbit.last_stop_seconds or 0.0
        assert rabbit.port == port
        assert await _get(rabbit.url, 3) == [b"one", b"two", b"three"]

        # A crash: a confirmed message in a quorum queue survives SIGKILL of the VM.
        await _publish(rabbit.url, [b"four"])
        await asyncio.to_thread(rabbit.kill)
        assert not rabbit.running
        assert rabbit.processes() == []
        await asyncio.to_thread(rabbit.start)
        after_kill = rabbit.last_start_seconds or 0.0
        assert await _message_count(rabbit.url, expect=1) == 1
        assert await _get(rabbit.url, 1) == [b"four"]

        # The rabbitmqctl way of stopping works too.
        await asyncio.to_thread(rabbit.stop, use_ctl=True)
        ctl_stop = rabbit.last_stop_seconds or 0.0
        assert not rabbit.running
    finally:
        await asyncio.to_thread(rabbit.cleanup)
    assert not rabbit.root.exists()
    assert rabbit.processes() == []
    await asyncio.to_thread(rabbit.cleanup)  # idempotent

    print(
        f"rabbit2 timings: first start {first_start:.2f}s, restart {restart:.2f}s "
        f"(stop {stop:.2f}s), kill {rabbit.last_kill_seconds:.2f}s + start {after_kill:.2f}s, "
        f"rabbitmqctl stop {ctl_stop:.2f}s"
    )

    # The primary node is untouched: same registration with epmd, and it still serves AMQP.
    assert (epmd_names() or {}).get("rabbit") == primary_before
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    await connection.close()
