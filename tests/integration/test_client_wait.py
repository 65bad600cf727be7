"""How a client call waits for its reply (dockhand/client/_client.py ``_wait`` / ``_lose``), against
the real broker: a connection lost mid-wait fails the attempt at once, and the retry (same command
id, a new connection and reply queue) gets its reply; a reply timeout ends the wait on time."""

from __future__ import annotations

import asyncio
import json
import time

import aio_pika
import aio_pika.abc
import pytest

from dockhand.client import Client, ReplyTimeout, Retry

from .conftest import AMQP_URL, WorkerProcess


async def next_message(queue: aio_pika.abc.AbstractQueue, within_s: float = 10) -> aio_pika.abc.AbstractIncomingMessage:
    deadline = time.monotonic() + within_s
    while (message := await queue.get(fail=False, no_ack=True)) is None:
        assert time.monotonic() < deadline, "no command arrived"
        await asyncio.sleep(0.02)
    return message


def failed_result(command_id: str, host_id: str) -> bytes:
    return json.dumps(
        {
            "command_id": command_id,
            "type": "host.info",
            "status": "failed",
            "host_id": host_id,
            "worker_id": "test",
            "error": {"code": "internal", "message": "answered by the test", "retryable": False},
            "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:00Z",
            "duration_ms": 0.0,
        }
    ).encode()


async def test_a_lost_connection_fails_the_wait_at_once_and_the_retry_gets_the_reply(
    worker: WorkerProcess, session_id: str
) -> None:
    # A queue bound for a host without a worker: the test reads the commands and answers them.
    ghost = f"t{session_id}-lost"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(f"{worker.prefix}.commands", routing_key=f"{ghost}.#")
        retry = Retry(attempts=3, reply_timeout_s=30, backoff_s=0.01)
        async with Client.connect(AMQP_URL, prefix=worker.prefix, host=ghost, retry=retry) as dh:
            call = asyncio.create_task(dh.request("host.info", command_id="lost-1", timeout=25))
            first = await next_message(queue)
            assert dh._link is not None
            lost_at = time.monotonic()
            await dh._link.connection.close()  # the connection goes while the call waits
            second = await next_message(queue)
            # Sent again at once, not after the 30 s reply timeout: the loss ended the wait.
            assert time.monotonic() - lost_at < 5
            assert first.message_id == second.message_id == "lost-1"
            assert first.reply_to != second.reply_to  # a new connection, a new reply queue
            assert not call.done()
            await channel.default_exchange.publish(
                aio_pika.Message(failed_result("lost-1", ghost), correlation_id=second.correlation_id),
                routing_key=second.reply_to or "",
            )
            result = await asyncio.wait_for(call, 10)
            assert (result.command_id, result.status, result.host_id) == ("lost-1", "failed", ghost)


async def test_a_reply_timeout_ends_each_wait_on_time_and_a_late_reply_is_still_taken(
    worker: WorkerProcess, session_id: str
) -> None:
    ghost = f"t{session_id}-late"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(f"{worker.prefix}.commands", routing_key=f"{ghost}.#")
        retry = Retry(attempts=2, reply_timeout_s=0.5, backoff_s=0.01)
        async with Client.connect(AMQP_URL, prefix=worker.prefix, host=ghost, retry=retry) as dh:
            started = time.monotonic()
            call = asyncio.create_task(dh.request("host.info", command_id="late-1", timeout=10))
            first = await next_message(queue)
            second = await next_message(queue)  # the first wait timed out: sent again
            assert 0.4 < time.monotonic() - started < 3
            assert first.message_id == second.message_id == "late-1"
            # The reply to the FIRST attempt (same correlation id) answers the call.
            await channel.default_exchange.publish(
                aio_pika.Message(failed_result("late-1", ghost), correlation_id=first.correlation_id),
                routing_key=first.reply_to or "",
            )
            result = await asyncio.wait_for(call, 5)
            assert result.command_id == "late-1"
        async with Client.connect(AMQP_URL, prefix=worker.prefix, host=ghost, retry=Retry.off(0.3)) as dh:
            started = time.monotonic()
            with pytest.raises(ReplyTimeout):
                await dh.request("host.info", command_id="late-2", timeout=5)
            assert 0.25 < time.monotonic() - started < 2
