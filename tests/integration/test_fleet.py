"""A fleet behind one broker: two real Docker hosts, three workers (host A with a hot standby,
host B on a second dockerd). Routing by host, `any` and `all`; standby takeover on kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import pytest

from .conftest import TEST_IMAGE, TEST_LABEL, Client, EventLog, WorkerFactory, WorkerProcess, connect_client, listen
from .dockerd2 import SecondDockerd, unique_name

pytestmark = pytest.mark.slow


@dataclass
class Fleet:
    a: WorkerProcess
    a_standby: WorkerProcess
    b: WorkerProcess
    docker_a: aiodocker.Docker
    docker_b: aiodocker.Docker
    client: Client
    log: EventLog


@pytest.fixture(scope="module")
def host_b_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecondDockerd]:
    daemon = SecondDockerd(Path(tmp_path_factory.mktemp("fleet")), name=unique_name("dhf"))
    with daemon:
        daemon.load_image(TEST_IMAGE)
        yield daemon


@pytest.fixture
async def fleet(workers: WorkerFactory, session_id: str, host_b_daemon: SecondDockerd) -> AsyncIterator[Fleet]:
    async with listen(workers.prefix) as log:
        a = await asyncio.to_thread(workers.start, "fa")
        a_standby = await asyncio.to_thread(workers.start, "fa")  # same host id: a hot standby
        b = await asyncio.to_thread(workers.start, "fb", DOCKHAND_DOCKER_HOST=host_b_daemon.url)
        docker_a, docker_b = aiodocker.Docker(), aiodocker.Docker(url=host_b_daemon.url)
        try:
            async with connect_client(a, session_id) as client:
                yield Fleet(a, a_standby, b, docker_a, docker_b, client, log)
        finally:
            for worker in (a, a_standby, b):
                await asyncio.to_thread(worker.stop)
            for docker in (docker_a, docker_b):
                for container in await docker.containers.list(
                    all=True, filters={"label": [f"{TEST_LABEL}={session_id}"]}
                ):
                    await container.delete(force=True)
                await docker.close()


async def _names(docker: aiodocker.Docker, ws: str) -> list[str]:
    containers = await docker.containers.list(all=True, filters={"label": [f"dockhand.workspace.id={ws}"]})
    return [c["Names"][0] for c in containers]


async def test_host_any_and_all_routing(fleet: Fleet) -> None:
    client = fleet.client
    payload = lambda ws: {"workspace_id": ws, "image": TEST_IMAGE, "labels": client.labels()}  # noqa: E731

    # <host>.<type> reaches only that host's worker (and its Docker daemon).
    ws_b = client.ws_id("onb")
    reply = await client.send("workspace.create", payload(ws_b), target=fleet.b.host_id)
    assert reply["status"] == "succeeded", reply
    assert reply["host_id"] == fleet.b.host_id
    assert await _names(fleet.docker_b, ws_b) == [f"/dockhand-{ws_b}"]
    assert await _names(fleet.docker_a, ws_b) == []

    # any.<type>: taken by exactly one worker of some host; the result names the host, and
    # later commands address that host.
    anywhere = [client.ws_id(f"any{i}") for i in range(6)]
    correlations = [
        await client.publish(client.command("workspace.create", payload(ws)), "any.workspace.create") for ws in anywhere
    ]
    replies = [await client.reply(c) for c in correlations]
    assert all(r["status"] == "succeeded" for r in replies), replies
    for ws, r in zip(anywhere, replies, strict=True):
        found = [
            c
            for docker in (fleet.docker_a, fleet.docker_b)
            for c in await docker.containers.list(all=True, filters={"label": [f"dockhand.workspace.id={ws}"]})
        ]
        assert len(found) == 1, (ws, found)
        # Any worker of the fleet may take it (the session's own worker too): the result
        # names the host, and that host's daemon has the container.
        assert r["host_id"] == found[0]["Labels"]["dockhand.host"]
        inspected = await client.send("workspace.inspect", {"workspace_id": ws}, target=r["host_id"])
        assert inspected["result"]["container_id"] == r["result"]["container_id"]
    await asyncio.sleep(0.5)
    assert all(client.replies[c].empty() for c in correlations)  # each answered once

    # all.<type>: every host answers once (the standby shares host A's queue: not twice).
    body = client.command("image.inspect", {"image": TEST_IMAGE})
    correlation = await client.publish(body, "all.image.inspect")
    answers = []
    with contextlib.suppress(AssertionError):  # until no more arrive
        while True:
            answers.append(await client.reply(correlation, timeout=3))
    hosts = [a["host_id"] for a in answers]
    # Every host of the prefix (the session's own worker too, when it runs), each exactly once.
    assert len(hosts) == len(set(hosts)), hosts
    assert {fleet.a.host_id, fleet.b.host_id} <= set(hosts), hosts
    assert all(a["status"] == "succeeded" for a in answers)


async def test_standby_takes_over_within_5_s_and_the_in_flight_command_completes_once(fleet: Fleet) -> None:
    client = fleet.client
    mine = lambda b: b["host_id"] == fleet.a.host_id  # noqa: E731
    # Exactly one of host A's workers is the active one for events. A worker's first heartbeat
    # can precede its winning the leader lock (it is then honestly "standby"): wait until the
    # lock is held and both workers have been heard, and take each one's latest heartbeat.
    await fleet.log.wait_for("heartbeat", lambda b: mine(b) and b["role"] == "active", timeout=15)
    deadline = time.monotonic() + 15
    while len({b["worker_id"] for b in fleet.log.select("heartbeat", mine)}) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    beats = fleet.log.select("heartbeat", mine)
    roles = {b["worker_id"]: b["role"] for b in beats}
    assert sorted(roles.values()) == ["active", "standby"], roles
    active_id = next(w for w, r in roles.items() if r == "active")
    assert beats

    # The active one is also the one consuming host A's commands; the standby does nothing.
    probe = await client.send("host.info", target=fleet.a.host_id)
    assert probe["worker_id"] == active_id
    consuming = fleet.a if active_id in fleet.a.log() else fleet.a_standby
    standby = fleet.a_standby if consuming is fleet.a else fleet.a

    ws = client.ws_id("failover")
    body = client.command(
        "workspace.create", {"workspace_id": ws, "image": TEST_IMAGE, "labels": client.labels(), "env": {"X": "1"}}
    )
    correlation = await client.publish(body, f"{fleet.a.host_id}.workspace.create")
    await asyncio.sleep(0.05)  # in flight
    killed_at = time.monotonic()
    consuming.proc.send_signal(signal.SIGKILL)
    consuming.proc.wait(10)
    reply = await client.reply(correlation, timeout=30)
    took = time.monotonic() - killed_at
    assert reply["status"] == "succeeded", reply
    assert took < 5, f"standby answered after {took:.1f} s"
    await asyncio.sleep(1)
    assert client.replies[correlation].empty()
    assert len(await _names(fleet.docker_a, ws)) == 1

    # The standby now serves host A, and publishes its events (once, not alongside another).
    after = await client.send("host.info", target=fleet.a.host_id)
    assert after["worker_id"] != active_id
    assert after["worker_id"] in standby.log()
    await fleet.log.wait_for(
        "heartbeat", lambda b: mine(b) and b["role"] == "active" and b["worker_id"] == after["worker_id"], timeout=10
    )
    startups = fleet.log.select("discovery.snapshot", lambda b: mine(b) and b["reason"] == "startup")
    assert len(startups) == 2  # the first leader's, then the new leader's: never both at once
