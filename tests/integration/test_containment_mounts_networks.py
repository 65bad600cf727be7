"""Containment of binds, volumes and networks (issue 10), as an untrusted sender would try it.

Each test sends the offending command to a real worker over the broker and checks with the
daemon that it ended as a contract error and that nothing was created or left behind. One
worker serves the whole module; it has its own default network and may also join one
unmanaged network (``DOCKHAND_ALLOWED_NETWORKS``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from .conftest import Client, WorkerFactory, WorkerProcess, connect_client, remove_labelled

Snapshot = tuple[frozenset[str], frozenset[str], frozenset[str]]


@pytest.fixture(scope="module")
def cm_worker(workers: WorkerFactory, session_id: str) -> Iterator[WorkerProcess]:
    worker = workers.start(
        "cm",
        DOCKHAND_DEFAULT_NETWORK=f"dhtest-{session_id}-cm",
        DOCKHAND_ALLOWED_NETWORKS=f"dhtest-{session_id}-allowed",
    )
    try:
        yield worker
    finally:
        # Stopped with the module: a second worker on this daemon would publish every later
        # test's container events a second time, under its own host id.
        worker.stop()
        remove_labelled(f"dockhand.host={worker.host_id}")


@pytest.fixture
async def cm(cm_worker: WorkerProcess, session_id: str) -> AsyncIterator[Client]:
    async with connect_client(cm_worker, session_id) as client:
        yield client


@pytest.fixture
def bind_dir(cm_worker: WorkerProcess) -> Path:
    """A fresh directory under the worker's bind root (the root is shared by the session)."""
    path = cm_worker.bind_root / f"cm-{secrets.token_hex(3)}"
    path.mkdir()
    return path


async def snapshot(docker: aiodocker.Docker, host_id: str) -> Snapshot:
    """Every container, network and volume the worker made (by its host label)."""
    label = json.dumps({"label": [f"dockhand.host={host_id}"]})
    containers = await docker.containers.list(all=True, filters=label)
    networks = await docker.networks.list(filters={"label": [f"dockhand.host={host_id}"]})
    volumes = (await docker.volumes.list(filters={"label": [f"dockhand.host={host_id}"]})).get("Volumes") or []
    return (
        frozenset(c.id for c in containers),
        frozenset(n["Id"] for n in networks),
        frozenset(v["Name"] for v in volumes),
    )


def payload(client: Client, test_image: str, ws: str, **extra: Any) -> dict[str, Any]:
    return {"workspace_id": ws, "image": test_image, "labels": client.labels(), **extra}


def bind(source: Path | str, target: str = "/h", *, read_only: bool = False) -> dict[str, Any]:
    return {"type": "bind", "source": str(source), "target": target, "read_only": read_only}


async def refused(
    client: Client, docker: aiodocker.Docker, command_type: str, body: dict[str, Any], code: str, status: str = ""
) -> dict[str, Any]:
    """Send ``body``; assert the error ``code`` (and ``status``) and that the worker made nothing."""
    before = await snapshot(docker, client.worker.host_id)
    reply = await client.send(command_type, body)
    assert reply["status"] in {"rejected", "failed"}, reply
    assert reply["error"]["code"] == code, reply
    if status:
        assert reply["status"] == status, reply
    assert await snapshot(docker, client.worker.host_id) == before, f"left behind by {body}"
    return reply


async def created(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    reply = await client.send("workspace.create", body)
    assert reply["status"] == "succeeded", reply
    return dict(reply["result"])


async def absent(docker: aiodocker.Docker, ws: str) -> bool:
    with contextlib.suppress(aiodocker.DockerError):
        await docker.containers.container(f"dockhand-{ws}").show()
        return False
    return True


# --- binds ------------------------------------------------------------------------------------


async def test_symlink_planted_by_a_workspace_does_not_reach_the_host(
    cm: Client, docker: aiodocker.Docker, test_image: str, bind_dir: Path
) -> None:
    shared = bind_dir / "sub"
    shared.mkdir()
    a = cm.ws_id("a")
    await created(cm, payload(cm, test_image, a, mounts=[bind(shared)]))
    planted = await cm.send(
        "workspace.exec", {"workspace_id": a, "command": ["sh", "-c", "ln -s / /h/x && mkdir /h/real && echo ok"]}
    )
    assert planted["result"]["stdout"] == "ok\n", planted
    assert os.readlink(shared / "x") == "/"  # the repro: a symlink to the host's root, under the root

    # B binds the symlink: it resolves to the host's /, outside the root.
    b = cm.ws_id("b")
    reply = await refused(
        cm, docker, "workspace.create", payload(cm, test_image, b, mounts=[bind(shared / "x")]), "forbidden", "rejected"
    )
    assert "resolves to /," in reply["error"]["message"]
    # Below the symlink is no better.
    await refused(
        cm, docker, "workspace.create", payload(cm, test_image, b, mounts=[bind(shared / "x" / "etc")]), "forbidden"
    )
    # A real directory A made: A could swap it for a symlink before B's next start.
    for source, read_only in [(shared / "real", True), (shared / "real", False), (bind_dir, True)]:
        reply = await refused(
            cm,
            docker,
            "workspace.create",
            payload(cm, test_image, b, mounts=[bind(source, read_only=read_only)]),
            "forbidden",
            "failed",
        )
        assert "nests with" in reply["error"]["message"], reply
    assert await absent(docker, b)

    # The same directory as A is fine (a mount point cannot be swapped from inside), and what
    # Docker is given is the resolved path.
    c = cm.ws_id("c")
    result = await created(cm, payload(cm, test_image, c, mounts=[bind(shared, read_only=True)], start=False))
    info = await docker.containers.container(result["container_id"]).show()
    assert [m["Source"] for m in info["Mounts"]] == [str(shared.resolve())]

    # Once A is gone, the directory it made can be bound.
    await cm.send("workspace.remove", {"workspace_id": a, "force": True})
    await cm.send("workspace.remove", {"workspace_id": c, "force": True})
    d = cm.ws_id("d")
    await created(cm, payload(cm, test_image, d, mounts=[bind(shared / "real")], start=False))
    await cm.send("workspace.remove", {"workspace_id": d, "force": True})


async def test_preexisting_symlinks_are_resolved(
    cm: Client, docker: aiodocker.Docker, test_image: str, bind_dir: Path, tmp_path: Path
) -> None:
    (bind_dir / "to-root").symlink_to("/")
    (bind_dir / "to-tmp").symlink_to(tmp_path)
    (bind_dir / "inner").mkdir()
    (bind_dir / "to-inner").symlink_to(bind_dir / "inner")
    ws = cm.ws_id()
    for source in ["to-root", "to-root/var/run", "to-tmp"]:
        reply = await refused(
            cm,
            docker,
            "workspace.create",
            payload(cm, test_image, ws, mounts=[bind(bind_dir / source, read_only=True)]),
            "forbidden",
            "rejected",
        )
        assert "outside DOCKHAND_ALLOWED_BIND_ROOTS" in reply["error"]["message"]
    result = await created(cm, payload(cm, test_image, ws, mounts=[bind(bind_dir / "to-inner")], start=False))
    info = await docker.containers.container(result["container_id"]).show()
    assert [m["Source"] for m in info["Mounts"]] == [str((bind_dir / "inner").resolve())]
    await cm.send("workspace.remove", {"workspace_id": ws, "force": True})


async def test_bind_source_must_exist_and_binds_of_one_create_must_not_nest(
    cm: Client, docker: aiodocker.Docker, test_image: str, bind_dir: Path
) -> None:
    ws = cm.ws_id()
    reply = await refused(
        cm,
        docker,
        "workspace.create",
        payload(cm, test_image, ws, mounts=[bind(bind_dir / "missing")]),
        "invalid_command",
        "rejected",
    )
    assert "does not resolve to an existing path" in reply["error"]["message"]
    (bind_dir / "a" / "b").mkdir(parents=True)
    nested = [bind(bind_dir / "a", "/a"), bind(bind_dir / "a" / "b", "/b", read_only=True)]
    await refused(cm, docker, "workspace.create", payload(cm, test_image, ws, mounts=nested), "forbidden", "rejected")
    assert await absent(docker, ws)


# --- volumes ----------------------------------------------------------------------------------


async def test_a_volume_belongs_to_the_workspace_that_made_it(
    cm: Client, docker: aiodocker.Docker, test_image: str
) -> None:
    owner, other = cm.ws_id("own"), cm.ws_id("oth")
    private, shared, fresh = f"{owner}-private", f"{owner}-shared", f"{other}-fresh"
    await created(
        cm,
        payload(
            cm,
            test_image,
            owner,
            project="p1",
            start=False,
            mounts=[
                {"source": private, "target": "/private"},
                {"source": shared, "target": "/shared", "share": "project"},
            ],
        ),
    )
    labels = (await (await docker.volumes.get(shared)).show())["Labels"]
    assert labels["dockhand.volume.share"] == "project"
    assert labels["dockhand.project"] == "p1"
    assert labels["dockhand.workspace.id"] == owner
    assert "dockhand.volume.share" not in (await (await docker.volumes.get(private)).show())["Labels"]

    # Not shared: not even for the same project. The fresh volume listed first is not made either.
    for project in ("p1", "p2", None):
        body = payload(
            cm,
            test_image,
            other,
            mounts=[{"source": fresh, "target": "/fresh"}, {"source": private, "target": "/data"}],
            **({"project": project} if project else {}),
        )
        reply = await refused(cm, docker, "workspace.create", body, "forbidden")
        assert "belongs to another workspace" in reply["error"]["message"]
    # Shared with p1: not for p2 nor a workspace without a project; asking to share it does not help.
    for project, share in (("p2", "none"), (None, "none"), ("p2", "project")):
        body = payload(
            cm,
            test_image,
            other,
            mounts=[{"source": shared, "target": "/data", "share": share}],
            **({"project": project} if project else {}),
        )
        await refused(cm, docker, "workspace.create", body, "forbidden")
    with pytest.raises(aiodocker.DockerError):
        await docker.volumes.get(fresh)
    assert await absent(docker, other)

    # Shared with p1, and the mounting workspace is of p1.
    await created(
        cm, payload(cm, test_image, other, project="p1", start=False, mounts=[{"source": shared, "target": "/data"}])
    )
    # Removing the other workspace with its volumes keeps the owner's volume.
    await cm.send("workspace.remove", {"workspace_id": other, "force": True, "remove_volumes": True})
    assert (await (await docker.volumes.get(shared)).show())["Name"] == shared
    await cm.send("workspace.remove", {"workspace_id": owner, "force": True, "remove_volumes": True})
    for name in (private, shared):
        with pytest.raises(aiodocker.DockerError):
            await docker.volumes.get(name)


async def test_unmanaged_volume_is_forbidden(cm: Client, docker: aiodocker.Docker, test_image: str) -> None:
    name = f"dhtest-{cm.session_id}-foreign-{secrets.token_hex(2)}"
    volume = await docker.volumes.create({"Name": name, "Labels": cm.labels()})
    try:
        ws = cm.ws_id()
        await refused(
            cm,
            docker,
            "workspace.create",
            payload(cm, test_image, ws, mounts=[{"source": name, "target": "/d"}]),
            "forbidden",
        )
    finally:
        await volume.delete()


# --- networks ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def unmanaged_network(
    docker: aiodocker.Docker, client: Client, name: str, test_image: str
) -> AsyncIterator[tuple[Any, str]]:
    """A network someone else runs, with a victim container on it (returned: network, victim name)."""
    network = await docker.networks.create({"Name": name, "Labels": client.labels()})
    victim_name = f"dhtest-{client.session_id}-victim-{secrets.token_hex(2)}"
    victim = await docker.containers.create(
        {
            "Image": test_image,
            "Labels": client.labels(),
            "HostConfig": {"NetworkMode": name},
            "NetworkingConfig": {"EndpointsConfig": {name: {"Aliases": ["db"]}}},
        },
        name=victim_name,
    )
    try:
        await victim.start()
        yield network, victim_name
    finally:
        await victim.delete(force=True)
        for container in (await network.show()).get("Containers") or {}:
            with contextlib.suppress(aiodocker.DockerError):
                await network.disconnect({"Container": container, "Force": True})
        await network.delete()


async def test_unmanaged_networks_cannot_be_joined(cm: Client, docker: aiodocker.Docker, test_image: str) -> None:
    name = f"dhtest-{cm.session_id}-foreign-{secrets.token_hex(2)}"
    async with unmanaged_network(docker, cm, name, test_image) as (network, victim):
        ws = cm.ws_id()
        reply = await refused(cm, docker, "workspace.create", payload(cm, test_image, ws, network=name), "forbidden")
        assert "DOCKHAND_ALLOWED_NETWORKS" in reply["error"]["message"]
        result = await created(cm, payload(cm, test_image, ws))
        for aliases in ([victim], ["db"], []):
            reply = await cm.send("network.connect", {"network": name, "workspace_id": ws, "aliases": aliases})
            assert reply["status"] == "failed", reply
            assert reply["error"]["code"] == "forbidden", reply
        info = await docker.containers.container(result["container_id"]).show()
        assert list(info["NetworkSettings"]["Networks"]) == [f"dhtest-{cm.session_id}-cm"]
        members = (await network.show())["Containers"]
        assert members  # the victim is still there
        assert result["container_id"] not in members
        await cm.send("workspace.remove", {"workspace_id": ws, "force": True})


async def test_an_allowed_network_can_be_joined_but_no_name_taken_over(
    cm: Client, docker: aiodocker.Docker, test_image: str
) -> None:
    name = f"dhtest-{cm.session_id}-allowed"
    async with unmanaged_network(docker, cm, name, test_image) as (network, victim):
        a, b = cm.ws_id("a"), cm.ws_id("b")
        # A joins at create under its own id; B joins later.
        await created(cm, payload(cm, test_image, a, network=name))
        await created(cm, payload(cm, test_image, b))
        for alias in (victim, victim.upper(), "db", "DB", a, f"dockhand-{a}"):
            reply = await cm.send("network.connect", {"network": name, "workspace_id": b, "aliases": [alias]})
            assert reply["status"] == "failed", (alias, reply)
            assert reply["error"]["code"] == "forbidden", (alias, reply)
            assert "a DNS name is never taken over" in reply["error"]["message"]
        members = (await network.show())["Containers"]
        assert all(m["Name"] != f"dockhand-{b}" for m in members.values())
        ok = await cm.send("network.connect", {"network": name, "workspace_id": b, "aliases": [f"{b}-api"]})
        assert ok["status"] == "succeeded", ok
        info = await docker.containers.container(f"dockhand-{b}").show()
        assert f"{b}-api" in info["NetworkSettings"]["Networks"][name]["Aliases"]
        for ws in (a, b):
            await cm.send("workspace.remove", {"workspace_id": ws, "force": True})


async def test_aliases_on_a_managed_network(cm: Client, docker: aiodocker.Docker, test_image: str) -> None:
    net = f"dhtest-{cm.session_id}-cmnet-{secrets.token_hex(2)}"
    assert (await cm.send("network.ensure", {"name": net, "labels": cm.labels()}))["status"] == "succeeded"
    a, b, elsewhere, future = cm.ws_id("a"), cm.ws_id("b"), cm.ws_id("e"), cm.ws_id("f")
    await created(cm, payload(cm, test_image, a, network=net, start=False))
    await created(cm, payload(cm, test_image, b, start=False))
    await created(cm, payload(cm, test_image, elsewhere, start=False))
    # A's id and name (even while A is stopped), and another workspace's id: never B's alias.
    for alias in (a, f"dockhand-{a}", elsewhere):
        reply = await cm.send("network.connect", {"network": net, "workspace_id": b, "aliases": [alias]})
        assert reply["error"]["code"] == "forbidden", (alias, reply)
    info = await docker.containers.container(f"dockhand-{b}").show()
    assert net not in info["NetworkSettings"]["Networks"]
    # An alias parked on a future workspace's id: that workspace then cannot join under it.
    parked = await cm.send("network.connect", {"network": net, "workspace_id": b, "aliases": [future]})
    assert parked["status"] == "succeeded", parked
    reply = await refused(cm, docker, "workspace.create", payload(cm, test_image, future, network=net), "forbidden")
    assert future in reply["error"]["message"]
    for ws in (a, b, elsewhere):
        await cm.send("workspace.remove", {"workspace_id": ws, "force": True})
    assert (await cm.send("network.remove", {"name": net}))["result"]["removed"] is True


async def test_docker_predefined_networks_are_forbidden(cm: Client, docker: aiodocker.Docker, test_image: str) -> None:
    ids = {n["Name"]: n["Id"] for n in await docker.networks.list() if n["Name"] in {"host", "none", "bridge"}}
    ws = cm.ws_id()
    for network in [
        "bridge",
        "BRIDGE",
        "Bridge",
        ids["host"],
        ids["host"][:12],
        ids["none"],
        ids["none"][:6],
        ids["bridge"],
    ]:
        await refused(cm, docker, "workspace.create", payload(cm, test_image, ws, network=network), "forbidden")
    for network in ["HOST", "none", "NoNe"]:  # never valid at all
        await refused(cm, docker, "workspace.create", payload(cm, test_image, ws, network=network), "invalid_command")
    assert await absent(docker, ws)
    await created(cm, payload(cm, test_image, ws, start=False))
    for network in ["host", "HOST", "none", "bridge", ids["host"], ids["none"][:12], ids["bridge"]]:
        reply = await cm.send("network.connect", {"network": network, "workspace_id": ws})
        assert reply["status"] in {"rejected", "failed"}, (network, reply)
        assert reply["error"]["code"] == "forbidden", (network, reply)
    info = await docker.containers.container(f"dockhand-{ws}").show()
    assert list(info["NetworkSettings"]["Networks"]) == [f"dhtest-{cm.session_id}-cm"]
    await cm.send("workspace.remove", {"workspace_id": ws, "force": True})


async def test_network_ensure_drivers_and_reserved_names(cm: Client, docker: aiodocker.Docker) -> None:
    name = f"dhtest-{cm.session_id}-drv-{secrets.token_hex(2)}"
    for driver in ("macvlan", "ipvlan", "overlay"):
        reply = await refused(cm, docker, "network.ensure", {"name": name, "driver": driver}, "forbidden", "rejected")
        assert "DOCKHAND_ALLOWED_NETWORK_DRIVERS" in reply["error"]["message"]
    for reserved in ("HOST", "None", "BRIDGE", "bridge"):
        await refused(cm, docker, "network.ensure", {"name": reserved}, "invalid_command", "rejected")


# --- half-made creates --------------------------------------------------------------------------


async def test_failed_creates_leave_nothing_behind(cm: Client, docker: aiodocker.Docker, test_image: str) -> None:
    ws, other = cm.ws_id(), cm.ws_id("own")
    foreign = f"{other}-data"
    await created(cm, payload(cm, test_image, other, start=False, mounts=[{"source": foreign, "target": "/d"}]))
    net = f"dhtest-{cm.session_id}-half-{secrets.token_hex(2)}"
    volume = {"source": f"{ws}-new", "target": "/new"}
    cases: list[tuple[dict[str, Any], str]] = [
        # The second mount is forbidden: neither the network nor the first volume is made.
        ({"network": net, "mounts": [volume, {"source": foreign, "target": "/d"}]}, "forbidden"),
        # Docker refuses to publish SCTP here: the container, volume and network go again.
        ({"network": net, "mounts": [volume], "ports": ["132/sctp"]}, "invalid_command"),
        # The image is missing: found out before anything is made.
        ({"network": net, "mounts": [volume], "image": f"{test_image}-missing", "pull": "never"}, "image_not_found"),
        # The container is created but cannot start.
        ({"network": net, "mounts": [volume], "entrypoint": ["/no/such/binary"]}, "invalid_command"),
    ]
    for extra, code in cases:
        reply = await refused(cm, docker, "workspace.create", payload(cm, test_image, ws, **extra), code)
        assert reply["error"]["code"] != "internal"
        assert await absent(docker, ws), extra
        with pytest.raises(aiodocker.DockerError):
            await docker.networks.get(net)
        with pytest.raises(aiodocker.DockerError):
            await docker.volumes.get(f"{ws}-new")
    await cm.send("workspace.remove", {"workspace_id": other, "force": True, "remove_volumes": True})


async def test_a_leftover_container_that_cannot_start_gives_a_contract_code(
    cm: Client, docker: aiodocker.Docker, test_image: str
) -> None:
    ws = cm.ws_id()
    body = payload(cm, test_image, ws, entrypoint=["/no/such/binary"], start=False)
    result = await created(cm, body)
    assert result["state"] == "created"
    for command_type, extra in (("workspace.start", {}), ("workspace.restart", {"timeout_s": 1})):
        reply = await cm.send(command_type, {"workspace_id": ws, **extra})
        assert reply["status"] == "failed", reply
        assert reply["error"]["code"] == "invalid_command", reply
    # Adopting it (same spec, now with start) fails to start it, but does not remove it.
    reply = await cm.send("workspace.create", {**body, "start": True})
    assert reply["error"]["code"] == "invalid_command", reply
    assert (await docker.containers.container(result["container_id"]).show())["Id"] == result["container_id"]
    await cm.send("workspace.remove", {"workspace_id": ws, "force": True})
