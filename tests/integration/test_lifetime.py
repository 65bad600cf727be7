"""Workspace lifetime on a real worker, broker and dockerd (issue 14): TTL stop / remove with one
``workspace.expired`` each, extend, expiry after the creating worker was killed (a standby and a
restarted worker take over), snapshots and ``image.remove``, and the host's capacity."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiodocker
import pytest

from .conftest import Client, EventLog, WorkerFactory, WorkerProcess, connect_client, listen


def _deadline(reply: dict[str, Any]) -> float:
    """A result's ``expires_at`` as a Unix time."""
    return datetime.fromisoformat(reply["result"]["expires_at"].replace("Z", "+00:00")).timestamp()


async def _create(client: Client, test_image: str, name: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    ws = client.ws_id(name)
    payload = {"workspace_id": ws, "image": test_image, "command": ["sleep", "300"], "labels": client.labels()}
    reply = await client.send("workspace.create", {**payload, **extra})
    assert reply["status"] == "succeeded", reply
    return ws, reply


async def _state(docker: aiodocker.Docker, ws: str) -> str | None:
    """The workspace container's state, ``None`` once it is gone."""
    containers = await docker.containers.list(all=True, filters={"label": [f"dockhand.workspace.id={ws}"]})
    if not containers:
        return None
    info = await containers[0].show()
    return str(info["State"]["Status"])


async def _wait_state(docker: aiodocker.Docker, ws: str, want: str | None, by: float) -> float:
    """Wait until the container is in ``want`` (``None``: gone); return when (Unix time)."""
    while time.time() < by:
        if await _state(docker, ws) == want:
            return time.time()
        await asyncio.sleep(0.1)
    raise AssertionError(f"{ws}: not {want or 'gone'} by the deadline + 3 s (state {await _state(docker, ws)})")


def _expired(events: EventLog, ws: str) -> list[dict[str, Any]]:
    return events.select("workspace.expired", lambda body: body.get("workspace_id") == ws)


async def test_a_3_s_ttl_stops_the_workspace_within_3_s_of_its_deadline_with_one_event(
    client: Client, events: EventLog, docker: aiodocker.Docker, test_image: str
) -> None:
    ws, reply = await _create(client, test_image, "ttl", ttl_s=3)
    deadline = _deadline(reply)
    assert 2 < deadline - time.time() <= 3.5
    stopped_at = await _wait_state(docker, ws, "exited", deadline + 3)
    assert stopped_at >= deadline - 0.5  # not before its time
    (event,) = await events.wait_for("workspace.expired", lambda b: b.get("workspace_id") == ws, timeout=5)
    assert event["action"] == "stopped"
    assert event["host_id"] == client.worker.host_id
    assert isinstance(event["seq"], int)
    assert event["epoch"]
    inspect = await client.send("workspace.inspect", {"workspace_id": ws})
    assert inspect["result"]["state"] == "exited"
    assert inspect["result"]["expires_at"] == reply["result"]["expires_at"]
    await asyncio.sleep(2)  # a later turn of the loop (and an inspect) must not expire it again
    assert len(_expired(events, ws)) == 1
    await client.send("workspace.remove", {"workspace_id": ws, "force": True})


async def test_on_expiry_remove_removes_it_and_extend_pushes_the_expiry_out(
    client: Client, events: EventLog, docker: aiodocker.Docker, test_image: str
) -> None:
    gone, reply = await _create(client, test_image, "ttl-rm", ttl_s=3, on_expiry="remove")
    kept, kept_reply = await _create(client, test_image, "ttl-ext", ttl_s=3)
    extended = await client.send("workspace.extend", {"workspace_id": kept, "ttl_s": 8})
    assert extended["status"] == "succeeded", extended
    assert _deadline(extended) - _deadline(kept_reply) > 4
    await _wait_state(docker, gone, None, _deadline(reply) + 3)
    (event,) = await events.wait_for("workspace.expired", lambda b: b.get("workspace_id") == gone, timeout=5)
    assert event["action"] == "removed"
    # Past its first deadline (and then some), the extended one still runs ...
    await asyncio.sleep(max(0.0, _deadline(kept_reply) + 2 - time.time()))
    assert await _state(docker, kept) == "running"
    assert _expired(events, kept) == []
    # ... until its new one.
    await _wait_state(docker, kept, "exited", _deadline(extended) + 3)
    await events.wait_for("workspace.expired", lambda b: b.get("workspace_id") == kept, timeout=5)
    assert len(_expired(events, gone)) == len(_expired(events, kept)) == 1
    leases = await docker.volumes.list(filters={"label": [f"dockhand.lease.of={kept}"]})
    assert len(leases["Volumes"] or []) == 1  # the extend's, and only it
    await client.send("workspace.remove", {"workspace_id": kept, "force": True})
    leases = await docker.volumes.list(filters={"label": [f"dockhand.lease.of={kept}"]})
    assert not leases["Volumes"]  # removed with the workspace


@pytest.fixture
async def ttl_host(workers: WorkerFactory, session_id: str) -> AsyncIterator[tuple[WorkerProcess, WorkerProcess]]:
    """A host with an active worker and a hot standby."""
    active = await asyncio.to_thread(workers.start, "ttl")
    standby = await asyncio.to_thread(workers.start, "ttl")
    yield active, standby
    for worker in (active, standby):
        worker.stop()


async def test_expiry_is_enforced_after_the_creating_worker_is_killed(
    ttl_host: tuple[WorkerProcess, WorkerProcess],
    workers: WorkerFactory,
    session_id: str,
    docker: aiodocker.Docker,
    test_image: str,
) -> None:
    active, standby = ttl_host
    async with listen(active.prefix) as events, connect_client(active, session_id) as client:
        await _until_one_leads(client)
        ws, reply = await _create(client, test_image, "ttl-ha", ttl_s=4)
        extended = await client.send("workspace.extend", {"workspace_id": ws, "ttl_s": 5})
        assert extended["status"] == "succeeded", extended
        creator = active if reply["worker_id"] in active.log() else standby
        other = standby if creator is active else active
        creator.stop(signal.SIGKILL)
        # The other worker takes over and enforces the extended deadline it never saw set.
        await _wait_state(docker, ws, "exited", _deadline(extended) + 3)
        await events.wait_for("workspace.expired", lambda b: b.get("workspace_id") == ws, timeout=5)
        # A restarted worker (the standby is now the host's only one) expires at start-up what is
        # already past its deadline: start it again, kill the active one, restart.
        second, second_reply = await _create(client, test_image, "ttl-restart", ttl_s=3)
        assert second_reply["worker_id"] in other.log()
        other.stop(signal.SIGKILL)
        await asyncio.sleep(max(0.0, _deadline(second_reply) + 0.5 - time.time()))
        assert await _state(docker, second) == "running"  # no worker: nothing expired it yet
        restarted = await asyncio.to_thread(workers.start, "ttl")
        try:
            await _wait_state(docker, second, "exited", time.time() + 8)
            await events.wait_for("workspace.expired", lambda b: b.get("workspace_id") == second, timeout=5)
            assert len(_expired(events, ws)) == len(_expired(events, second)) == 1
        finally:
            restarted.stop()


async def _until_one_leads(client: Client, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        reply = await client.send("host.info", {}, timeout=10)
        if reply["status"] == "succeeded":
            return
        await asyncio.sleep(0.2)
    raise AssertionError("no worker of the host answered")


async def test_snapshot_then_create_from_it_keeps_the_files_and_image_remove_is_guarded(
    client: Client, docker: aiodocker.Docker, test_image: str
) -> None:
    ws, _ = await _create(client, test_image, "snap", ttl_s=600)
    try:
        await _snapshot_checks(client, docker, test_image, ws)
    finally:  # whatever failed: the snapshot image goes too
        with contextlib.suppress(aiodocker.DockerError):
            await docker.images.delete(f"dockhand-snapshots/{ws}:t1", force=True)


async def _snapshot_checks(client: Client, docker: aiodocker.Docker, test_image: str, ws: str) -> None:
    put = await client.send(
        "workspace.put_files",
        {"workspace_id": ws, "files": [{"path": "/srv/note.txt", "content": base64.b64encode(b"kept\n").decode()}]},
    )
    assert put["status"] == "succeeded", put
    snap = await client.send("workspace.snapshot", {"workspace_id": ws, "tag": "t1"})
    assert snap["status"] == "succeeded", snap
    image = snap["result"]["image"]
    assert image == f"dockhand-snapshots/{ws}:t1"
    info = await docker.images.inspect(image)
    labels = info["Config"]["Labels"]
    assert labels["dockhand.snapshot.of"] == ws
    assert labels["dockhand.host"] == client.worker.host_id
    assert labels.get("dockhand.expires-at") == ""  # the workspace's deadline is not the image's
    copy = client.ws_id("from-snap")
    try:
        made = await client.send(
            "workspace.create",
            {"workspace_id": copy, "image": image, "command": ["sleep", "300"], "labels": client.labels()},
        )
        assert made["status"] == "succeeded", made
        assert made["result"]["expires_at"] is None  # a new workspace: no deadline of the old one
        read = await client.send("workspace.get_file", {"workspace_id": copy, "path": "/srv/note.txt"})
        assert base64.b64decode(read["result"]["content"]) == b"kept\n"
        foreign = await client.send("image.remove", {"image": test_image})
        assert foreign["status"] == "failed", foreign
        assert foreign["error"]["code"] == "forbidden", foreign
        used = await client.send("image.remove", {"image": image})
        assert used["status"] == "failed", used
        assert used["error"]["code"] == "conflict", used
        assert (await docker.images.inspect(image))["Id"] == info["Id"]
    finally:
        await client.send("workspace.remove", {"workspace_id": copy, "force": True})
        await client.send("workspace.remove", {"workspace_id": ws, "force": True})
    removed = await client.send("image.remove", {"image": image})
    assert removed["status"] == "succeeded", removed
    assert removed["result"] == {"image": image, "removed": True}, removed
    again = await client.send("image.remove", {"image": image})
    assert again["result"] == {"image": image, "removed": False}
    # A name under the snapshot repository that this host did not make is not usable.
    await docker.images.tag(test_image, "dockhand-snapshots/not-ours", tag="x")
    try:
        forged = await client.send(
            "workspace.create",
            {
                "workspace_id": client.ws_id("forged"),
                "image": "dockhand-snapshots/not-ours:x",
                "labels": client.labels(),
            },
        )
        assert forged["status"] == "failed", forged
        assert forged["error"]["code"] == "forbidden", forged
    finally:
        await docker.images.delete("dockhand-snapshots/not-ours:x")


async def test_a_host_at_its_limit_says_capacity_before_any_docker_call(
    workers: WorkerFactory, session_id: str, docker: aiodocker.Docker, test_image: str
) -> None:
    worker = await asyncio.to_thread(workers.start, "cap", DOCKHAND_MAX_WORKSPACES="3")
    try:
        async with connect_client(worker, session_id) as client:
            made = [(await _create(client, test_image, f"cap{i}"))[0] for i in range(3)]
            fourth = client.ws_id("cap3")
            reply = await client.send(
                "workspace.create",
                {"workspace_id": fourth, "image": test_image, "command": ["sleep", "300"], "labels": client.labels()},
            )
            assert reply["status"] == "failed", reply
            assert reply["error"]["code"] == "capacity", reply
            assert reply["error"]["retryable"] is True, reply
            assert await _state(docker, fourth) is None  # no container made
            again = await client.send(
                "workspace.create",
                {"workspace_id": made[0], "image": test_image, "command": ["sleep", "300"], "labels": client.labels()},
            )
            assert again["status"] == "succeeded"
            assert again["result"]["created"] is False
            await client.send("workspace.remove", {"workspace_id": made[0], "force": True})
            freed = await client.send(
                "workspace.create",
                {"workspace_id": fourth, "image": test_image, "command": ["sleep", "300"], "labels": client.labels()},
            )
            assert freed["status"] == "succeeded", freed
            heartbeat = await _heartbeat(worker)
            assert heartbeat["workspaces"] == {"count": 3, "limit": 3}
            for ws in [*made[1:], fourth]:
                await client.send("workspace.remove", {"workspace_id": ws, "force": True})
    finally:
        worker.stop()


async def _heartbeat(worker: WorkerProcess) -> dict[str, Any]:
    async with listen(worker.prefix) as log:
        beats = await log.wait_for(
            "heartbeat", lambda b: b.get("host_id") == worker.host_id and b.get("role") == "active", timeout=30
        )
        return beats[-1]


async def _probe(client: Client, ws: str, address: str, port: int) -> bool:
    """Whether ``ws`` can open a TCP connection to ``address:port`` (busybox nc, 2 s)."""
    reply = await client.send(
        "workspace.exec",
        {"workspace_id": ws, "command": ["sh", "-c", f"echo | nc -w 2 {address} {port} >/dev/null 2>&1"]},
    )
    assert reply["status"] == "succeeded", reply
    return bool(reply["result"]["exit_code"] == 0)


def _ip(info: dict[str, Any]) -> str:
    return next(iter(info["NetworkSettings"]["Networks"].values()))["IPAddress"]


async def test_an_egress_free_workspace_reaches_its_peers_and_nothing_else(
    client: Client, docker: aiodocker.Docker, test_image: str
) -> None:
    serve = ["sh", "-c", "mkdir -p /w && echo hi > /w/index.html && exec httpd -f -p 8080 -h /w"]
    sealed, sealed_reply = await _create(client, test_image, "sealed", egress=False)
    peer, peer_reply = await _create(client, test_image, "peer", egress=False, command=serve)
    open_ws, open_reply = await _create(client, test_image, "open", command=serve, ports=[8080])
    try:
        sealed_info = await docker.containers.container(sealed_reply["result"]["container_id"]).show()
        peer_info = await docker.containers.container(peer_reply["result"]["container_id"]).show()
        open_info = await docker.containers.container(open_reply["result"]["container_id"]).show()
        (network,) = sealed_info["NetworkSettings"]["Networks"]
        assert network == f"dhtest-{client.session_id}-noegress"
        assert (await (await docker.networks.get(network)).show())["Internal"] is True
        host_bridge = (await (await docker.networks.get(next(iter(open_info["NetworkSettings"]["Networks"])))).show())[
            "IPAM"
        ]["Config"][0]["Gateway"]
        published = open_reply["result"]["ports"][0]["host_port"]
        # The control: a workspace with egress reaches the host's bridge address (RabbitMQ listens
        # on every address of this machine), so the refusals below are the network's doing.
        assert await _probe(client, open_ws, host_bridge, 5672)
        assert await _probe(client, sealed, _ip(peer_info), 8080)  # a peer on its network
        assert not await _probe(client, sealed, host_bridge, 5672)  # the host
        assert not await _probe(client, sealed, "172.17.0.1", 5672)  # docker0, the host again
        assert not await _probe(client, sealed, "127.0.0.1", published)  # a loopback-published port
        assert not await _probe(client, sealed, _ip(open_info), 8080)  # another network
        # Exec (above) and files work; joining a network with egress does not.
        put = await client.send(
            "workspace.put_files",
            {"workspace_id": sealed, "files": [{"path": "/tmp/x", "content": base64.b64encode(b"x").decode()}]},
        )
        assert put["status"] == "succeeded", put
        joined = await client.send(
            "network.connect", {"network": f"dhtest-{client.session_id}", "workspace_id": sealed}
        )
        assert joined["status"] == "failed", joined
        assert joined["error"]["code"] == "forbidden", joined
        assert not sealed_info["HostConfig"]["PortBindings"]
    finally:
        for ws in (sealed, peer, open_ws):
            await client.send("workspace.remove", {"workspace_id": ws, "force": True})
    with_ports = await client.send(
        "workspace.create",
        {"workspace_id": client.ws_id("sealed-ports"), "image": test_image, "egress": False, "ports": [80]},
    )
    assert with_ports["status"] == "rejected", with_ports
    on_open = await client.send(
        "workspace.create",
        {
            "workspace_id": client.ws_id("sealed-open"),
            "image": test_image,
            "egress": False,
            "network": f"dhtest-{client.session_id}",
            "labels": client.labels(),
        },
    )
    assert on_open["status"] == "failed", on_open
    assert on_open["error"]["code"] == "forbidden", on_open


async def _volumes(docker: aiodocker.Docker, label: str) -> set[str]:
    answer = await docker.volumes.list(filters={"label": [label]})
    return {v["Name"] for v in answer["Volumes"] or []}


async def test_gc_removes_an_old_orphaned_volume_only(
    workers: WorkerFactory, session_id: str, docker: aiodocker.Docker, test_image: str
) -> None:
    worker = await asyncio.to_thread(
        workers.start, "gc", DOCKHAND_GC="true", DOCKHAND_GC_INTERVAL_S="1", DOCKHAND_GC_GRACE_S="4"
    )
    unmanaged = f"dhtest-{session_id}-unmanaged"
    await docker.volumes.create({"Name": unmanaged, "Labels": {"dockhand-test.session": session_id}})
    try:
        async with connect_client(worker, session_id) as client:
            mine = f"dockhand.host={worker.host_id}"

            async def orphan(name: str) -> str:
                volume = f"dhtest-{session_id}-{name}"
                ws, _ = await _create(client, test_image, name, mounts=[{"source": volume, "target": "/data"}])
                await client.send("workspace.remove", {"workspace_id": ws, "force": True})  # the volume stays
                return volume

            old = await orphan("gc-old")
            kept, _ = await _create(client, test_image, "gc-used", ttl_s=600)
            await client.send("workspace.extend", {"workspace_id": kept, "ttl_s": 600})  # a live lease
            assert old in await _volumes(docker, mine)
            await asyncio.sleep(3)
            fresh = await orphan("gc-fresh")  # made a grace period after the old one
            deadline = time.monotonic() + 8
            while old in await _volumes(docker, mine) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            left = await _volumes(docker, mine)
            assert old not in left  # orphaned and older than the grace: removed
            assert fresh in left  # orphaned but young: kept (for now)
            assert any(v.startswith(f"dockhand-lease-{kept}-") for v in left)  # its workspace lives
            assert unmanaged in await _volumes(docker, f"dockhand-test.session={session_id}")  # not ours
            assert "unused and older than 4 s" in worker.log()
            await client.send("workspace.remove", {"workspace_id": kept, "force": True})
    finally:
        worker.stop()
        with contextlib.suppress(aiodocker.DockerError):
            await (await docker.volumes.get(unmanaged)).delete()
