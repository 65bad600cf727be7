"""What an answer costs on the broker: a confirmed reply then an ack (how dockhand answered before)
against the reply and the ack in one transaction (worker/answers.py), same broker, same run.

Each round fills a quorum "commands" queue, consumes it with manual acks, and answers every
delivery to a reply queue: at c=1 (one answer at a time: the latency) and at c=64 (64 answers in
flight: the throughput, where the transactions batch their commits). Prints one line per cell
and the ratio of the transaction to the confirm, per round and overall.

Run: .venv/bin/python bench/answer_cost.py [--answers 400] [--rounds 3]   (DOCKHAND_AMQP_URL or
AMQP_URL, default amqp://guest:guest@localhost:5672/). Removes its queues.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from types import SimpleNamespace
from typing import Any

import aio_pika
import aio_pika.abc
from faststream.rabbit import RabbitExchange

from dockhand.worker.answers import Outgoing, Transactions

URL = os.environ.get("DOCKHAND_AMQP_URL") or os.environ.get("AMQP_URL") or "amqp://guest:guest@localhost:5672/"


class _Messages:
    """Just what Transactions needs of a Publisher: the message it would send."""

    async def confirmed(self, payload: bytes, **options: Any) -> None:  # pragma: no cover - unused
        raise AssertionError("every delivery here has a channel")

    def message(self, payload: bytes, **options: Any) -> aio_pika.Message:
        return aio_pika.Message(payload, correlation_id=options.get("correlation_id"))


async def _round(connection: aio_pika.abc.AbstractRobustConnection, mode: str, answers: int, c: int) -> float:
    """Seconds for ``answers`` answers at concurrency ``c`` in ``mode`` ("confirm" or "tx")."""
    setup = await connection.channel()
    name = f"bench-answer-{uuid.uuid4().hex[:8]}"
    await setup.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    replies = await setup.declare_queue(exclusive=True)
    for i in range(answers):
        await setup.default_exchange.publish(aio_pika.Message(b"%d" % i, delivery_mode=2), routing_key=name)
    channel = await connection.channel(publisher_confirms=mode == "confirm")
    await channel.set_qos(prefetch_count=c)
    queue = await channel.get_queue(name)
    tx = Transactions(_Messages())  # type: ignore[arg-type]
    done = asyncio.Event()
    count = 0
    began = 0.0

    async def answer(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal count, began
        if not began:
            began = time.perf_counter()
        if mode == "confirm":
            await channel.default_exchange.publish(
                aio_pika.Message(message.body, correlation_id="k"), routing_key=replies.name
            )
            await message.ack()
        else:
            reply = Outgoing(message.body, RabbitExchange(), replies.name, {"correlation_id": "k"})
            # Transactions takes FastStream's message: the aio-pika one is its raw_message.
            await tx.commit(SimpleNamespace(raw_message=message), [reply], message.ack)  # type: ignore[arg-type]
        count += 1
        if count == answers:
            done.set()

    try:
        tag = await queue.consume(answer)
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - began
        await queue.cancel(tag)
    finally:
        await setup.queue_delete(name)  # also when the round failed
        await channel.close()
        await setup.close()
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    connection = await aio_pika.connect_robust(URL)
    async with connection:
        for c in (1, 64):
            ratios = []
            for r in range(args.rounds):
                confirm = await _round(connection, "confirm", args.answers, c)
                tx = await _round(connection, "tx", args.answers, c)
                ratios.append(tx / confirm)
                print(
                    f"c={c:<3} round {r + 1}: confirm {confirm / args.answers * 1e3:.3f} ms/answer, "
                    f"tx {tx / args.answers * 1e3:.3f} ms/answer, tx/confirm {tx / confirm:.2f}"
                )
            print(
                f"c={c:<3} tx/confirm time per answer: median {statistics.median(ratios):.2f} "
                f"(range {min(ratios):.2f}-{max(ratios):.2f})"
            )


if __name__ == "__main__":
    asyncio.run(main())
