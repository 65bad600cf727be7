"""Event sequence numbers (contract v1.1) on the real broker: ``seq`` counts up by one per host
and family, ``epoch`` is one per publisher and changes on restart and on fail-over."""

from __future__ import annotations

import asyncio
import secrets
import signal
from typing import Any

import aiodocker

from .conftest import Client, EventLog, WorkerFactory, WorkerProcess, listen, service_of
from .test_events import containers_removed, discovery_labels, run_container


def family(log: EventLog, host: str, name: str, epoch: str | None = None) -> list[dict[str, Any]]:
    """Bodies of one host's family (routing key ``<host>.<name>.…``), in arrival order."""
    return [
        body
        for key, body, _ in log.items
        if key.split(".")[:2] == [host, name] and (epoch is None or body.get("epoch") == epoch)
    ]


def assert_counts_by_one(bodies: list[dict[str, Any]], first: int | None = None) -> None:
    seqs = [body.get("seq") for body in bodies]
    assert seqs, "no messages"
    assert all(type(seq) is int for seq in seqs), seqs
    start = seqs[0] if first is None else first
    assert seqs == list(range(start, start + len(seqs))), [(b["type"], b["seq"]) for b in bodies]


def epochs_in_order(log: EventLog, host: str) -> list[str]:
    """The epochs of ``host``'s events, each once, in the order they first arrived."""
    seen: list[str] = []
    for key, body, _ in log.items:
        if key.startswith(f"{host}.") and not key.endswith(".heartbeat") and body["epoch"] not in seen:
            seen.append(body["epoch"])
    return seen


async def test_workspace_lifecycle_events_count_up_by_one_in_one_epoch(
    client: Client, events: EventLog, test_image: str
) -> None:
    host = client.worker.host_id
    ws = client.ws_id("seq")
    reply = await client.send("workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels()})
    assert reply["status"] == "succeeded", reply
    container_id = reply["result"]["container_id"]
    ours = lambda b: b["container"]["id"] == container_id  # noqa: E731
    await events.wait_for("container.start", ours)
    stop = await client.send("workspace.stop", {"workspace_id": ws, "timeout_s": 1})
    assert stop["status"] == "succeeded", stop
    await events.wait_for("container.stop", ours)
    await client.send("workspace.remove", {"workspace_id": ws, "force": True})
    await events.wait_for("container.destroy", ours)

    containers = family(events, host, "container")
    kinds = [b["type"] for b in containers if ours(b)]
    assert kinds[:2] == ["container.create", "container.start"], kinds
    assert {"container.die", "container.stop"} <= set(kinds), kinds
    assert kinds[-1] == "container.destroy", kinds
    # Every container event of the host since we bound (any container of the daemon: one counter).
    assert_counts_by_one(containers)
    networks = family(events, host, "network")
    assert any(b["type"] == "network.connect" and b["container_id"] == container_id for b in networks)
    assert_counts_by_one(networks)  # its own counter
    assert len({b["epoch"] for b in containers + networks}) == 1  # one publisher, one epoch
    assert isinstance(containers[0]["epoch"], str)
    assert containers[0]["epoch"]


async def test_discovery_has_its_own_counter_and_every_new_publisher_a_new_epoch(
    workers: WorkerFactory, session_id: str, docker: aiodocker.Docker, test_image: str
) -> None:
    """A worker of its own host (listened to from before it starts), then a standby taking over
    after a kill -9, then a restart: three publishers, three epochs, each counting from 1."""
    domain = f"seq-{session_id}-{secrets.token_hex(2)}.example.test"
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        worker = workers.start("seq", DOCKHAND_RECONCILE_INTERVAL_S="2")
        started.append(worker)
        return worker

    async with listen(workers.prefix) as log, containers_removed(docker) as made:
        try:
            first = await asyncio.to_thread(start)
            host = first.host_id
            mine = lambda b: b["host_id"] == host  # noqa: E731
            [startup] = await log.wait_for("discovery.snapshot", lambda b: mine(b) and b["reason"] == "startup")
            first_epoch = startup["epoch"]
            container = await run_container(docker, session_id, discovery_labels(domain), test_image)
            made.append(container)
            await log.wait_for("discovery.added", lambda b: mine(b) and service_of(container.id)(b))
            await container.stop(t=1)
            await log.wait_for("discovery.removed", lambda b: mine(b) and service_of(container.id)(b))
            await log.wait_for("discovery.snapshot", lambda b: mine(b) and b["reason"] == "periodic")

            # Fail-over: a standby of the same host takes the lock when the leader dies.
            standby = await asyncio.to_thread(start)
            await asyncio.sleep(1)  # campaigning, standing by
            first.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.proc.wait, 10)
            [takeover] = await log.wait_for(
                "discovery.snapshot",
                lambda b: mine(b) and b["reason"] == "startup" and b["epoch"] != first_epoch,
                timeout=30,
            )
            second_epoch = takeover["epoch"]

            # Restart: the same host's next worker is a new publisher too.
            assert await asyncio.to_thread(standby.stop) == 0
            restarted = await asyncio.to_thread(start)
            [again] = await log.wait_for(
                "discovery.snapshot",
                lambda b: mine(b) and b["reason"] == "startup" and b["epoch"] not in {first_epoch, second_epoch},
                timeout=30,
            )
            third_epoch = again["epoch"]
            await log.wait_for(
                "discovery.snapshot", lambda b: mine(b) and b["reason"] == "periodic" and b["epoch"] == third_epoch
            )
            assert await asyncio.to_thread(restarted.stop) == 0
        finally:
            for worker in started:  # (extra workers of this host must not outlive the test)
                await asyncio.to_thread(worker.stop)

    # One publisher after the other: the host's events never mix epochs.
    assert epochs_in_order(log, host) == [first_epoch, second_epoch, third_epoch]
    assert len({first_epoch, second_epoch, third_epoch}) == 3
    for epoch in (first_epoch, second_epoch, third_epoch):
        discovery = family(log, host, "discovery", epoch)
        # The snapshots share the discovery counter, which starts at 1 with each epoch.
        assert_counts_by_one(discovery, first=1)
        assert any(b["type"] == "discovery.snapshot" and b["reason"] == "startup" for b in discovery)
        containers = family(log, host, "container", epoch)
        if containers:  # (the daemon may have been quiet meanwhile)
            assert_counts_by_one(containers, first=1)
    first_discovery = family(log, host, "discovery", first_epoch)
    kinds = [b["type"] for b in first_discovery if service_of(container.id)(b)]
    assert kinds == ["discovery.added", "discovery.removed"], kinds
    periodic = [b for b in first_discovery if b["type"] == "discovery.snapshot" and b["reason"] == "periodic"]
    assert periodic
    assert all(b["seq"] > 1 for b in periodic)
    # Our container's create/start/…/stop were counted in the first epoch's container family.
    first_containers = family(log, host, "container", first_epoch)
    assert [b["type"] for b in first_containers if b["container"]["id"] == container.id][:2] == [
        "container.create",
        "container.start",
    ]
    assert_counts_by_one(first_containers, first=1)
