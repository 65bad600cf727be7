"""Crash safety with real faults: SIGKILL mid-command, orphans, poison messages, a hostile
flood, failed result publishes and graceful drain — nothing lost, nothing done twice."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
import uuid
from collections import Counter
from typing import Any

import aio_pika
import aiodocker
import pytest

from .conftest import (
    AMQP_URL,
    REGISTRY_IMAGE,
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    Client,
    WorkerFactory,
    WorkerProcess,
    connect_client,
)

pytestmark = pytest.mark.slow

SOAK_TRIALS = int(os.environ.get("DOCKHAND_SOAK_TRIALS", "20"))


async def _containers_of(docker: aiodocker.Docker, ws: str) -> list[Any]:
    return await docker.containers.list(all=True, filters={"label": [f"dockhand.workspace.id={ws}"]})


async def _restart(workers: WorkerFactory, worker: WorkerProcess, name: str) -> WorkerProcess:
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(10)
    return workers.start(name)


@pytest.mark.fault  # 20 kill -9 trials: .ci/run runs it, a plain scripts/test skips it
async def test_sigkill_mid_command_completes_exactly_once(
    workers: WorkerFactory, session_id: str, docker: aiodocker.Docker, test_image: str
) -> None:
    """A slow create (pull: always, with auth) is interrupted by SIGKILL at a random moment;
    the restarted worker finishes it. Every trial: one container, one succeeded result."""
    rng = random.Random(int(session_id, 16))
    worker = workers.start("kill")
    lost = duplicated = extra_containers = 0
    twice_replied = twice_on_results = 0  # which of the two made a duplicate (printed)
    killed_mid = 0
    try:
        for trial in range(SOAK_TRIALS):
            async with connect_client(worker, session_id) as client:
                ws = client.ws_id(f"k{trial}")
                body = client.command(
                    "workspace.create",
                    {
                        "workspace_id": ws,
                        "image": REGISTRY_IMAGE,
                        "pull": "always",
                        "registry_auth": {"username": REGISTRY_USER, "password": REGISTRY_PASSWORD},
                        "labels": client.labels(),
                    },
                )
                correlation = await client.publish(body, f"{worker.host_id}.workspace.create")
                await asyncio.sleep(rng.uniform(0.0, 0.6))
                if client.replies[correlation].empty():
                    killed_mid += 1
                worker = await _restart(workers, worker, "kill")
                try:
                    reply = await client.reply(correlation, timeout=60)
                except AssertionError:
                    lost += 1
                    continue
                await asyncio.sleep(0.5)  # a duplicate answer would arrive by now
                answers = 1 + client.replies[correlation].qsize()
                duplicated += answers - 1
                twice_replied += answers - 1
                assert reply["status"] == "succeeded", reply
                published = await client.results_for(body["command_id"], timeout=1)
                duplicated += max(0, len(published) - 1)
                twice_on_results += max(0, len(published) - 1)
                containers = await _containers_of(docker, ws)
                extra_containers += len(containers) - 1
                await client.send("workspace.remove", {"workspace_id": ws, "force": True})
    finally:
        print(
            f"\nsoak: trials={SOAK_TRIALS} killed_mid_command={killed_mid} lost={lost} "
            f"duplicated={duplicated} (replies {twice_replied}, results exchange {twice_on_results}) "
            f"extra_containers={extra_containers}"
        )
        worker.stop()
    assert (lost, duplicated, extra_containers) == (0, 0, 0)
    assert killed_mid >= SOAK_TRIALS // 4, "too few kills landed mid-command to mean anything"


async def test_orphan_container_is_adopted_not_duplicated(
    workers: WorkerFactory, session_id: str, docker: aiodocker.Docker, test_image: str
) -> None:
    """SIGKILL right after Docker created the container, before any result: the redelivered
    command adopts it."""
    worker = workers.start("orphan")
    try:
        async with connect_client(worker, session_id) as client:
            ws = client.ws_id("orphan")
            body = client.command(
                "workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels()}
            )
            correlation = await client.publish(body, f"{worker.host_id}.workspace.create")
            deadline = time.monotonic() + 30
            while not await _containers_of(docker, ws):
                assert time.monotonic() < deadline, "the container never appeared"
                await asyncio.sleep(0.005)
            worker = await _restart(workers, worker, "orphan")
            reply = await client.reply(correlation, timeout=60)
            assert reply["status"] == "succeeded", reply
            assert reply["result"]["state"] == "running"
            await asyncio.sleep(0.5)
            assert client.replies[correlation].empty()
            assert len(await _containers_of(docker, ws)) == 1
    finally:
        worker.stop()


async def test_poison_command_is_dead_lettered_after_the_delivery_limit(
    workers: WorkerFactory, session_id: str, docker: aiodocker.Docker, test_image: str
) -> None:
    """A command that takes the worker down every time it runs ends in the dead-letter queue
    after DOCKHAND_DELIVERY_LIMIT (3 here) deliveries instead of looping forever."""
    worker = workers.start("poison")
    try:
        async with connect_client(worker, session_id) as client:
            ws = client.ws_id("poison")
            created = await client.send(
                "workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels()}
            )
            container = docker.containers.container(created["result"]["container_id"])
            message_id = uuid.uuid4().hex
            marker = f"poison-{message_id[:8]}"
            body = client.command(
                "workspace.exec", {"workspace_id": ws, "command": ["sh", "-c", f"sleep 60; echo {marker}"]}
            )
            await client.publish(body, f"{worker.host_id}.workspace.exec", message_id=message_id)
            deliveries = 0
            for _ in range(8):
                # Wait for this delivery to start running, then crash the worker under it.
                deadline = time.monotonic() + 20
                running = False
                while time.monotonic() < deadline:
                    top = await container.top(ps_args="-o pid,args")
                    running = sum(marker in " ".join(p) for p in top["Processes"]) > deliveries
                    if running:
                        break
                    await asyncio.sleep(0.05)
                if not running:
                    break  # not delivered again: it should be dead-lettered
                deliveries += 1
                worker = await _restart(workers, worker, "poison")
            dead = await client.dead_letter(message_id, timeout=20)
            assert json.loads(dead.body)["command_id"] == body["command_id"]
            assert 2 <= deliveries <= 5, deliveries
            # ... and the worker is serving again.
            assert (await client.send("host.info"))["status"] == "succeeded"
    finally:
        worker.stop()


def _hostile_bodies(rng: random.Random, count: int) -> list[tuple[str, bytes, bool]]:
    """(routing type, body, has a readable command_id) for ``count`` bad messages."""
    injections = [
        "; rm -rf /",
        "$(reboot)",
        "`id`",
        "../../etc/passwd",
        "\x00",
        "ws\nx",
        "WS",
        "a" * 200,
        "ünï",
        "{{7*7}}",
    ]
    out: list[tuple[str, bytes, bool]] = []
    for i in range(count):
        kind = i % 8
        cid = f"flood-{i}"
        if kind == 0:
            out.append(("host.info", rng.randbytes(rng.randint(1, 300)), False))
        elif kind == 1:
            out.append(("host.info", b"[" * rng.randint(1000, 50000) + b"]" * 10, False))
        elif kind == 2:
            body = {
                "command_id": cid,
                "type": "workspace.create",
                "payload": {"workspace_id": rng.choice(injections), "image": "x"},
            }
            out.append(("workspace.create", json.dumps(body).encode(), True))
        elif kind == 3:
            body = {
                "command_id": cid,
                "type": "workspace.exec",
                "payload": {"workspace_id": "ok", "command": "sh -c id"},
            }
            out.append(("workspace.exec", json.dumps(body).encode(), True))
        elif kind == 4:
            body = {"command_id": cid, "type": rng.choice(injections), "payload": {}}
            out.append(("host.info", json.dumps(body).encode(), True))
        elif kind == 5:
            body = {"command_id": cid, "type": "workspace.start", "payload": {"workspace_id": 7}}
            out.append(("workspace.start", json.dumps(body).encode(), True))
        elif kind == 6:
            depth = rng.randint(50, 5000)  # built as text: deeper than Python's own json can write
            nested = '{"a":' * depth + '"x"' + "}" * depth
            raw = f'{{"command_id": "{cid}", "type": "image.inspect", "payload": {{"image": {nested}}}}}'
            out.append(("image.inspect", raw.encode(), True))
        else:
            image = rng.choice(injections) + " && curl evil"
            body = {"command_id": cid, "type": "image.pull", "payload": {"image": image}}
            out.append(("image.pull", json.dumps(body).encode(), True))
    # A few bodies over the 1 MiB limit.
    for i in range(3):
        out.append(
            (
                "host.info",
                json.dumps({"command_id": f"big-{i}", "type": "host.info", "pad": "x" * 1_100_000}).encode(),
                False,
            )
        )
    return out


async def _dead_count(prefix: str) -> int:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{prefix}.commands.dead", passive=True)
        return int(queue.declaration_result.message_count or 0)


async def test_hostile_flood_is_all_dead_lettered_while_valid_commands_succeed(
    client: Client, worker: WorkerProcess
) -> None:
    rng = random.Random(4242)
    bad = _hostile_bodies(rng, 10_000)
    before = await _dead_count(worker.prefix)
    valid: list[str] = []
    began = time.monotonic()
    for i, (routing_type, body, _) in enumerate(bad):
        await client.publish(body, f"{worker.host_id}.{routing_type}", reply=False)
        if i % 1000 == 0:
            valid.append(await client.publish(client.command("host.info"), f"{worker.host_id}.host.info"))
    for correlation in valid:
        reply = await client.reply(correlation, timeout=120)
        assert reply["status"] == "succeeded", reply
    deadline = time.monotonic() + 180
    while (dead := await _dead_count(worker.prefix) - before) < len(bad) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    elapsed = time.monotonic() - began
    print(f"\nflood: {len(bad)} hostile messages dead-lettered: {dead} in {elapsed:.1f} s; valid ok: {len(valid)}")
    assert dead == len(bad)
    assert worker.proc.poll() is None, "the worker died"
    assert "Traceback" not in worker.log()
    with_ids = Counter(
        body.get("status") for _, body in client.results if str(body.get("command_id", "")).startswith("flood-")
    )
    assert with_ids == {"rejected": sum(1 for _, _, has_id in bad if has_id)}
    # Drain what we added, so later tests scanning the dead-letter queue stay quick.
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        dead_queue = await channel.get_queue(f"{worker.prefix}.commands.dead", ensure=False)
        await dead_queue.purge()


async def test_failed_result_publish_is_retried_not_dropped(client: Client, worker: WorkerProcess) -> None:
    """The broker refuses the result (a full queue with reject-publish is bound to the results
    exchange, so every publish is nacked): no ack, no lost answer — it is retried until the
    broker takes it, and the command is answered once."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        full = await channel.declare_queue(
            f"{worker.prefix}.full-{uuid.uuid4().hex[:6]}",
            exclusive=True,
            arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
        )
        await full.bind(f"{worker.prefix}.results", routing_key="#")
        await channel.default_exchange.publish(aio_pika.Message(b"filler"), routing_key=full.name)
        body = client.command("host.info")
        correlation = await client.publish(body, f"{worker.host_id}.host.info")
        await asyncio.sleep(1.5)
        assert client.replies[correlation].empty()  # refused: results are published before replies
        await full.purge()
        reply = await client.reply(correlation, timeout=60)
        await full.delete(if_unused=False, if_empty=False)
    assert reply["status"] == "succeeded"
    await asyncio.sleep(0.5)
    assert client.replies[correlation].empty()
    # A nacked publish still reached the other queues bound to the exchange (AMQP gives no
    # all-or-nothing routing), so those saw each attempt: identical copies of the one result,
    # never a second execution.
    copies = await client.results_for(body["command_id"])
    assert len({json.dumps(b, sort_keys=True) for _, b in copies}) == 1
    assert reply == copies[0][1]


async def test_sigterm_drains_in_flight_and_leaves_the_rest_queued(
    workers: WorkerFactory, session_id: str, test_image: str
) -> None:
    worker = workers.start("drain", DOCKHAND_MAX_CONCURRENCY="2", DOCKHAND_PREFETCH_PER_SLOT="1")
    async with connect_client(worker, session_id) as client:
        workspaces = [client.ws_id(f"d{i}") for i in range(4)]
        for ws in workspaces:
            await client.send("workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels()})
        correlations = [
            await client.publish(
                client.command("workspace.exec", {"workspace_id": ws, "command": ["sh", "-c", "sleep 2; echo done"]}),
                f"{worker.host_id}.workspace.exec",
            )
            for ws in workspaces
        ]
        await asyncio.sleep(0.7)  # two are running, two wait in the queue
        began = time.monotonic()
        code = await asyncio.to_thread(worker.stop, signal.SIGTERM, 30)
        assert code == 0, worker.log()[-3000:]
        assert time.monotonic() - began < 10
        first = [r for r in [client.replies[c] for c in correlations] if not r.empty()]
        assert len(first) == 2  # the in-flight two finished and were answered before exit
        log = worker.log()
        assert log.index("shutting down") < log.rindex("workspace.exec")
        # The other two were never started: the next worker runs them, once each.
        successor = workers.start("drain")
        try:
            replies = [await client.reply(c, timeout=60) for c in correlations]
            assert [r["status"] for r in replies] == ["succeeded"] * 4
            assert all(r["result"]["stdout"] == "done\n" for r in replies)
            by_worker = Counter(r["worker_id"] for r in replies)
            assert sorted(by_worker.values()) == [2, 2], by_worker  # two before the drain, two after
            await asyncio.sleep(0.5)
            assert all(client.replies[c].empty() for c in correlations)
        finally:
            successor.stop()
