"""Pipelined event publishing on the real broker and daemon: no confirm round trip per event,
and still every family in ``seq`` order, cause before effect, no gap, no duplicate."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aio_pika.abc
import aiodocker

from dockhand.schemas import ContainerEvent
from dockhand.schemas.events import ContainerRef
from dockhand.worker.publishing import EventPipeline, EventSequencer

from .conftest import AMQP_URL, WorkerFactory, listen, service_of
from .test_event_seq import assert_counts_by_one, family
from .test_events import containers_removed, discovery_labels, run_container


async def test_pipelined_publishes_reach_the_broker_in_seq_order(session_id: str) -> None:
    """Four tasks publish 1,500 events of three families through one pipeline on a real channel:
    the broker hands them out in the order they were numbered, each family 1..N, while many
    were unconfirmed at once (the pipeline did not wait for each confirm)."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(f"dhtest-{session_id}-pipe-{secrets.token_hex(2)}", "topic")
        queue = await channel.declare_queue("", exclusive=True)
        await queue.bind(exchange, "#")
        sequencer = EventSequencer()
        numbered: list[tuple[str, int]] = []
        number = sequencer.number

        def recording(routing_key: str, model: Any) -> Any:
            result = number(routing_key, model)
            numbered.append((routing_key.split(".")[1], result.seq))
            return result

        sequencer.number = recording  # type: ignore[method-assign]
        publish_channel = await connection.channel()

        async def current() -> Any:
            return await publish_channel.get_underlay_channel()

        pipeline = EventPipeline(sequencer, current, exchange.name, window=64)
        most_in_flight = 0
        model = ContainerEvent(
            event_id="e",
            host_id="h",
            type="container.start",
            time=datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
            container=ContainerRef(id="c"),
        )

        async def publisher(n: int) -> None:
            nonlocal most_in_flight
            for i in range(n):
                key = random.choice(["h.container.start", "h.discovery.added", "h.network.connect"])
                await pipeline.publish(key, model, "dockhand.event")
                most_in_flight = max(most_in_flight, pipeline.in_flight)
                if i % 50 == 0:
                    await asyncio.sleep(0)

        try:
            await asyncio.gather(*(publisher(375) for _ in range(4)))
            await asyncio.wait_for(pipeline.flush(), 30)
            assert (pipeline.confirmed, pipeline.resent, pipeline.lost) == (1500, 0, 0)
            arrived: list[tuple[str, int]] = []
            async with queue.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
                    assert message.type == "dockhand.event"
                    arrived.append(((message.routing_key or "").split(".")[1], json.loads(message.body)["seq"]))
                    if len(arrived) == 1500:
                        break
        finally:
            await pipeline.close()
            await exchange.delete()
    assert arrived == numbered  # the wire order is the numbering order, across families too
    for name in ("container", "discovery", "network"):
        seqs = [seq for f, seq in arrived if f == name]
        assert seqs == list(range(1, len(seqs) + 1))
    assert most_in_flight > 1


async def test_a_burst_of_starts_keeps_cause_before_effect_and_every_family_gapless(
    workers: WorkerFactory, session_id: str, docker: aiodocker.Docker, test_image: str
) -> None:
    """A worker of its own host, listened to from before it starts; 20 labelled containers
    started at once, then stopped at once: every ``container.start`` arrives before its
    ``discovery.added``, every ``die`` before its ``discovery.removed``, and each family counts
    1, 2, 3, … with no gap and no duplicate."""
    n = 20
    async with listen(workers.prefix) as log, containers_removed(docker) as made:
        worker = await asyncio.to_thread(workers.start, "pipe")
        host = worker.host_id
        try:
            await log.wait_for("discovery.snapshot", lambda b: b["host_id"] == host and b["reason"] == "startup")
            tag = secrets.token_hex(2)
            containers = await asyncio.gather(
                *(
                    run_container(
                        docker, session_id, discovery_labels(f"pipe-{session_id}-{tag}-{i}.example.test"), test_image
                    )
                    for i in range(n)
                )
            )
            made.extend(containers)
            ids = {c.id for c in containers}
            mine = lambda b: b["host_id"] == host and (b.get("service") or {}).get("container_id") in ids  # noqa: E731
            await log.wait_for("discovery.added", mine, count=n, timeout=60)
            await asyncio.gather(*(c.stop(t=1) for c in containers))
            await log.wait_for("discovery.removed", mine, count=n, timeout=60)
        finally:
            assert await asyncio.to_thread(worker.stop) == 0

    ours = [(key.split(".", 1)[1], body) for key, body, _ in log.items if key.startswith(f"{host}.")]
    for container_id in ids:
        kinds = [
            kind
            for kind, body in ours
            if (body.get("container") or {}).get("id") == container_id or service_of(container_id)(body)
        ]
        assert kinds.count("discovery.added") == 1, kinds
        assert kinds.count("discovery.removed") == 1, kinds
        assert kinds.count("container.start") == 1, kinds
        assert kinds.index("container.start") < kinds.index("discovery.added"), kinds
        assert kinds.index("container.die") < kinds.index("discovery.removed"), kinds
    for name in ("container", "network", "discovery"):
        bodies = family(log, host, name)
        if bodies or name != "network":
            assert_counts_by_one(bodies, first=1)  # from 1: no gap, no duplicate, in order
        assert len({b["epoch"] for b in bodies}) <= 1
