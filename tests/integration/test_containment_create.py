"""Issue 10, create side: what an untrusted sender (or image) asked for, sent through the real
worker, broker and daemon; each ends as a contract error with nothing left behind, and the
hardening defaults are applied while the images people run keep working.

Crafted images (labels under dockhand's prefix, a huge or sctp EXPOSE) are built FROM the test
image with the classic builder, tagged per session, labelled with the test label and removed
at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest

from .conftest import (
    REGISTRY_IMAGE,
    TEST_IMAGE,
    TEST_LABEL,
    Client,
    EventLog,
    WorkerFactory,
    connect_client,
    service_of,
)

# --- helpers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crafted:
    """The session's crafted images."""

    labelled: str  # LABEL dockhand.enabled/domain/port, dockhand.managed/host/project/owner
    victim_domain: str
    exposing: str  # EXPOSE 20000-20299
    sctp: str  # EXPOSE 132/sctp


def _build(tag: str, dockerfile: str, context: Path) -> None:
    (context / "Dockerfile").write_text(dockerfile)
    out = subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(context)],
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def crafted(session_id: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crafted]:
    base = f"FROM {TEST_IMAGE}\nLABEL {TEST_LABEL}={session_id}\n"
    victim = f"victim-{session_id}.example.test"
    images = Crafted(
        labelled=f"dockhand-test/containment-labels-{session_id}:1",
        victim_domain=victim,
        exposing=f"dockhand-test/containment-expose-{session_id}:1",
        sctp=f"dockhand-test/containment-sctp-{session_id}:1",
    )
    dockerfiles = {
        images.labelled: base
        + f"LABEL dockhand.enabled=true dockhand.domain={victim} dockhand.port=8080 "
        + "dockhand.managed=true dockhand.host=some-other-host dockhand.project=victim "
        + "dockhand.owner=victim Dockhand.Enabled=true\n",
        images.exposing: base + "EXPOSE 20000-20299\n",
        images.sctp: base + "EXPOSE 132/sctp\n",
    }
    try:
        for tag, dockerfile in dockerfiles.items():
            _build(tag, dockerfile, tmp_path_factory.mktemp("build"))
        yield images
    finally:
        subprocess.run(["docker", "rmi", "-f", *dockerfiles], capture_output=True, timeout=120, check=False)


def create_payload(client: Client, ws: str, **extra: Any) -> dict[str, Any]:
    return {"workspace_id": ws, "image": TEST_IMAGE, "labels": client.labels(), **extra}


def assert_rejected(reply: dict[str, Any], code: str, *fragments: str) -> None:
    assert reply["status"] == "rejected", reply
    assert reply["error"]["code"] == code, reply
    for fragment in fragments:
        assert fragment in reply["error"]["message"], reply


async def assert_nothing_left(
    docker: aiodocker.Docker, ws: str, *, network: str | None = None, volumes: tuple[str, ...] = ()
) -> None:
    """No container of the workspace (by label or by name), none of these volumes, nor the network."""
    assert await docker.containers.list(all=True, filters={"label": [f"dockhand.workspace.id={ws}"]}) == []
    with pytest.raises(aiodocker.DockerError):
        await docker.containers.container(f"dockhand-{ws}").show()
    for volume in volumes:
        with pytest.raises(aiodocker.DockerError):
            await aiodocker.volumes.DockerVolume(docker, volume).show()
    if network is not None:
        listed = await docker.networks.list(filters={"name": [network]})
        assert [n["Name"] for n in listed if n["Name"] == network] == []


@contextlib.asynccontextmanager
async def removed_after(client: Client, *workspaces: str) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for ws in workspaces:
            await client.send("workspace.remove", {"workspace_id": ws, "force": True, "remove_volumes": True})


# --- 1. resources ---------------------------------------------------------------------------------


@pytest.mark.parametrize("resources", [{"cpus": 4e-10}, {"cpus": 0.0099}, {"memory_bytes": 1024}, {"pids": 0}])
async def test_limits_that_would_mean_no_limit_are_rejected(
    client: Client, docker: aiodocker.Docker, resources: dict[str, Any]
) -> None:
    ws = client.ws_id("res")
    network = f"{ws}-net"
    reply = await client.send("workspace.create", create_payload(client, ws, resources=resources, network=network))
    assert_rejected(reply, "invalid_command", "resources")
    await assert_nothing_left(docker, ws, network=network)


async def test_the_smallest_cpu_limit_is_a_limit(client: Client, docker: aiodocker.Docker) -> None:
    ws = client.ws_id("cpu")
    async with removed_after(client, ws):
        reply = await client.send("workspace.create", create_payload(client, ws, resources={"cpus": 0.01}, start=False))
        assert reply["status"] == "succeeded", reply
        host = (await docker.containers.container(reply["result"]["container_id"]).show())["HostConfig"]
        assert host["NanoCpus"] == 10_000_000


# --- 2. image references ----------------------------------------------------------------------


@pytest.fixture
async def unmanaged(docker: aiodocker.Docker, client: Client) -> AsyncIterator[str]:
    """Someone else's container: the target of the path traversal."""
    name = client.ws_id("victim")
    container = await docker.containers.create({"Image": TEST_IMAGE, "Labels": client.labels()}, name=name)
    try:
        yield name
    finally:
        await container.delete(force=True)


@pytest.mark.parametrize(
    "template",
    [
        "x/../../containers/{name}",
        "x/../../containers/{name}/json?",
        "../containers/{name}",
        "%2e%2e/containers/{name}",
        "x/%2E%2E/%2E%2E/containers/{name}",
        "a//b",
        "x/./../containers/{name}",
        "[::1]:5000/x",
        "Foo/bar",
    ],
)
async def test_image_inspect_never_reaches_another_endpoint(
    client: Client, unmanaged: str, docker: aiodocker.Docker, template: str
) -> None:
    image = template.format(name=unmanaged)
    container_id = (await docker.containers.container(unmanaged).show())["Id"]
    reply = await client.send("image.inspect", {"image": image})
    assert_rejected(reply, "invalid_command")
    assert container_id not in str(reply)
    assert unmanaged not in str(reply.get("result"))


@pytest.mark.parametrize("image", ["a//b", "x/../y", "Foo/bar:1", "ghcr.io./a"])
async def test_create_and_pull_of_a_non_reference_are_invalid(
    client: Client, docker: aiodocker.Docker, image: str
) -> None:
    ws = client.ws_id("ref")
    assert_rejected(await client.send("workspace.create", create_payload(client, ws, image=image)), "invalid_command")
    assert_rejected(await client.send("image.pull", {"image": image}), "invalid_command")
    await assert_nothing_left(docker, ws)


async def test_registry_policy_applies_to_image_inspect(workers: WorkerFactory, session_id: str) -> None:
    registry = REGISTRY_IMAGE.partition("/")[0]  # 127.0.0.1:5055
    worker = workers.start("reg", DOCKHAND_ALLOWED_REGISTRIES=registry.upper())
    try:
        async with connect_client(worker, session_id) as client:
            # The test image is a Docker Hub name: outside the list, in every spelling.
            for image in (TEST_IMAGE, f"docker.io/{TEST_IMAGE}", f"index.docker.io/{TEST_IMAGE}"):
                reply = await client.send("image.inspect", {"image": image})
                assert_rejected(reply, "forbidden", "DOCKHAND_ALLOWED_REGISTRIES")
            # The allowed registry, compared case-insensitively: not forbidden (found or not).
            allowed = await client.send("image.inspect", {"image": REGISTRY_IMAGE})
            assert allowed["status"] != "rejected", allowed
            # (Found when an earlier test pulled it, missing otherwise: "error" is then null or absent.)
            assert (allowed.get("error") or {}).get("code") in {None, "image_not_found"}, allowed
    finally:
        worker.stop()


# --- 3. labels inherited from the image; one holder per domain -------------------------------


async def test_image_labels_cannot_announce_or_forge(
    client: Client, events: EventLog, docker: aiodocker.Docker, crafted: Crafted
) -> None:
    ws = client.ws_id("lbl")
    async with removed_after(client, ws):
        reply = await client.send("workspace.create", create_payload(client, ws, image=crafted.labelled))
        assert reply["status"] == "succeeded", reply
        container_id = reply["result"]["container_id"]
        assert reply["result"]["project"] is None
        assert reply["result"].get("owner") is None
        labels = (await docker.containers.container(container_id).show())["Config"]["Labels"]
        for key in ("dockhand.enabled", "dockhand.domain", "dockhand.port", "dockhand.project", "dockhand.owner"):
            assert labels[key] == "", key
        assert labels["Dockhand.Enabled"] == ""
        assert labels["dockhand.managed"] == "true"
        assert labels["dockhand.host"] == client.worker.host_id
        assert labels["dockhand.workspace.id"] == ws
        # Nothing is announced: no event, not in discovery.list, not under the forged project.
        await asyncio.sleep(1.0)
        assert events.select("discovery.added", service_of(container_id)) == []
        assert events.select("discovery.invalid", service_of(container_id)) == []
        services = (await client.send("discovery.list"))["result"]["services"]
        assert crafted.victim_domain not in [s["domain"] for s in services]
        listed = await client.send("workspace.list", {"project": "victim"})
        assert ws not in [w["workspace_id"] for w in listed["result"]["workspaces"]]


async def test_own_discovery_wins_over_the_images(
    client: Client, events: EventLog, docker: aiodocker.Docker, crafted: Crafted
) -> None:
    ws = client.ws_id("own")
    domain = f"{ws}.example.test"
    async with removed_after(client, ws):
        reply = await client.send(
            "workspace.create",
            create_payload(client, ws, image=crafted.labelled, discovery={"domain": domain, "port": 8080}),
        )
        assert reply["status"] == "succeeded", reply
        [added] = await events.wait_for("discovery.added", service_of(reply["result"]["container_id"]))
        assert added["service"]["domain"] == domain


async def test_a_domain_is_announced_once_first_holder_wins(
    client: Client, events: EventLog, docker: aiodocker.Docker
) -> None:
    first, second = client.ws_id("dup1"), client.ws_id("dup2")
    domain = f"dup-{client.session_id}-{first[-4:]}.example.test"
    spec = {"discovery": {"domain": domain, "port": 8080}}
    async with removed_after(client, first, second):
        one = await client.send("workspace.create", create_payload(client, first, **spec))
        assert one["status"] == "succeeded", one
        one_id = one["result"]["container_id"]
        await events.wait_for("discovery.added", service_of(one_id))
        await asyncio.sleep(1.1)  # creation times are compared in whole seconds
        two = await client.send("workspace.create", create_payload(client, second, **spec))
        assert two["status"] == "succeeded", two
        two_id = two["result"]["container_id"]
        [invalid] = await events.wait_for("discovery.invalid", service_of(two_id))
        assert domain in invalid["reason"]
        assert f"dockhand-{first}" in invalid["reason"]
        assert events.select("discovery.added", service_of(two_id)) == []
        listed = (await client.send("discovery.list"))["result"]["services"]
        assert [s["container_id"] for s in listed if s["domain"] == domain] == [one_id]

        # The holder goes: the next claimant is announced.
        await client.send("workspace.remove", {"workspace_id": first, "force": True})
        await events.wait_for("discovery.removed", service_of(one_id))
        [added] = await events.wait_for("discovery.added", service_of(two_id))
        assert added["service"]["domain"] == domain
        listed = (await client.send("discovery.list"))["result"]["services"]
        assert [s["container_id"] for s in listed if s["domain"] == domain] == [two_id]


# --- 4. the port cap and the image's EXPOSE ---------------------------------------------------


async def test_image_exposing_more_than_the_cap_is_rejected(
    client: Client, docker: aiodocker.Docker, crafted: Crafted
) -> None:
    ws = client.ws_id("exp")
    network = f"{ws}-net"
    reply = await client.send("workspace.create", create_payload(client, ws, image=crafted.exposing, network=network))
    # 300, plus the base image's own 8080
    assert_rejected(reply, "invalid_command", "exposes 301 ports", "`ports`")
    await assert_nothing_left(docker, ws, network=network)
    # Naming the ports is the way out.
    async with removed_after(client, ws):
        ok = await client.send("workspace.create", create_payload(client, ws, image=crafted.exposing, ports=[20000]))
        assert ok["status"] == "succeeded", ok
        assert [p["container_port"] for p in ok["result"]["ports"]] == [20000]


# --- 5. mount targets, sctp -----------------------------------------------------------------


@pytest.mark.parametrize(
    "mounts",
    [
        [{"type": "tmpfs", "target": "/data"}, {"type": "tmpfs", "target": "/data/"}],
        [{"type": "volume", "source": "{ws}-v", "target": "/d"}, {"type": "tmpfs", "target": "//d"}],
        [{"type": "tmpfs", "target": "/proc"}],
        [{"type": "tmpfs", "target": "/x/../proc"}],
        [{"type": "tmpfs", "target": "/sys"}],
        [{"type": "tmpfs", "target": "/dev"}],
        [{"type": "volume", "source": "{ws}-v", "target": "/proc/sys"}],
        [{"type": "tmpfs", "target": "/"}],
    ],
    ids=["same-target", "same-target-cleaned", "proc", "proc-dotdot", "sys", "dev", "volume-proc-sys", "root"],
)
async def test_bad_mount_targets_are_rejected_before_anything_is_made(
    client: Client, docker: aiodocker.Docker, mounts: list[dict[str, Any]]
) -> None:
    ws = client.ws_id("mnt")
    network = f"{ws}-net"
    for mount in mounts:
        if "source" in mount:
            mount["source"] = mount["source"].format(ws=ws)
    reply = await client.send("workspace.create", create_payload(client, ws, mounts=mounts, network=network))
    assert_rejected(reply, "invalid_command", "mount")
    await assert_nothing_left(docker, ws, network=network, volumes=(f"{ws}-v",))


async def test_dev_shm_tmpfs_still_works(client: Client) -> None:
    ws = client.ws_id("shm")
    async with removed_after(client, ws):
        reply = await client.send(
            "workspace.create", create_payload(client, ws, mounts=[{"type": "tmpfs", "target": "/dev/shm"}])
        )
        assert reply["status"] == "succeeded", reply


async def test_sctp_ports_are_rejected_up_front(client: Client, docker: aiodocker.Docker, crafted: Crafted) -> None:
    ws = client.ws_id("sctp")
    network = f"{ws}-net"
    reply = await client.send("workspace.create", create_payload(client, ws, ports=["132/sctp"], network=network))
    assert_rejected(reply, "invalid_command", "sctp")
    await assert_nothing_left(docker, ws, network=network)
    from_image = await client.send("workspace.create", create_payload(client, ws, image=crafted.sctp, network=network))
    assert_rejected(from_image, "invalid_command", "sctp", "`ports`")
    await assert_nothing_left(docker, ws, network=network)


# --- 6. reserved labels in any case, Docker's namespaces --------------------------------------


@pytest.mark.parametrize(
    "key", ["Dockhand.managed", "DOCKHAND.host", "com.docker.compose.project", "IO.Docker.x", "org.dockerproject.y"]
)
async def test_reserved_labels_are_forbidden(client: Client, docker: aiodocker.Docker, key: str) -> None:
    ws = client.ws_id("key")
    reply = await client.send("workspace.create", create_payload(client, ws, labels={**client.labels(), key: "x"}))
    assert_rejected(reply, "forbidden", key)
    await assert_nothing_left(docker, ws)
    network = f"{ws}-net"
    ensured = await client.send("network.ensure", {"name": network, "labels": {**client.labels(), key: "x"}})
    assert_rejected(ensured, "forbidden", key)
    await assert_nothing_left(docker, ws, network=network)


# --- 7. hardening defaults, and the images people run keep working ----------------------------


async def test_defaults_are_applied_and_a_web_server_answers(client: Client, docker: aiodocker.Docker) -> None:
    ws = client.ws_id("web")
    async with removed_after(client, ws):
        reply = await client.send("workspace.create", create_payload(client, ws, restart_policy="on-failure"))
        assert reply["status"] == "succeeded", reply
        assert reply["result"]["state"] == "running"
        info = await docker.containers.container(reply["result"]["container_id"]).show()
        host = info["HostConfig"]
        assert {"NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP", "SETPCAP", "SYS_CHROOT"} <= set(host["CapDrop"])
        assert host["MemorySwap"] == host["Memory"] == 512 * 1024 * 1024
        assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 5}
        assert {(u["Name"], u["Soft"], u["Hard"]) for u in host["Ulimits"]} == {("nofile", 1024, 4096), ("core", 0, 0)}
        assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}
        assert host["CgroupnsMode"] == "private"

        # busybox httpd, the image's own command, answers on its published 127.0.0.1 port.
        [port] = reply["result"]["ports"]
        assert port["host_ip"] == "127.0.0.1"
        body = await _http_get(f"http://127.0.0.1:{port['host_port']}/")
        assert "dockhand test page" in body

        # Inside: the dropped capabilities are gone, the limits hold, the cgroup view is private.
        out = await client.send(
            "workspace.exec",
            {"workspace_id": ws, "command": ["sh", "-c", "grep CapEff /proc/self/status; ulimit -n; ulimit -Hn"]},
        )
        assert out["status"] == "succeeded", out
        cap_line, soft, hard = out["result"]["stdout"].split("\n")[:3]
        effective = int(cap_line.split()[1], 16)
        for bit in (13, 27, 29, 31):  # NET_RAW, MKNOD, AUDIT_WRITE, SETFCAP
            assert not effective & (1 << bit), cap_line
        assert effective & (1 << 10)  # NET_BIND_SERVICE kept
        assert (soft, hard) == ("1024", "4096")
        cgroup = await client.send("workspace.exec", {"workspace_id": ws, "command": ["cat", "/proc/self/cgroup"]})
        lines = [line for line in cgroup["result"]["stdout"].splitlines() if line]
        assert lines
        assert all(line.endswith(":/") for line in lines), lines


async def test_a_non_root_user_runs_with_the_defaults(client: Client) -> None:
    ws = client.ws_id("user")
    async with removed_after(client, ws):
        reply = await client.send("workspace.create", create_payload(client, ws, user="1000:1000"))
        assert reply["status"] == "succeeded", reply
        assert reply["result"]["state"] == "running"
        out = await client.send(
            "workspace.exec",
            {"workspace_id": ws, "command": ["sh", "-c", "id -u; id -g; echo hi > /tmp/f && cat /tmp/f"]},
        )
        assert out["status"] == "succeeded", out
        assert out["result"]["stdout"] == "1000\n1000\nhi\n"
        # the image's httpd runs as that user and still serves (8080 needs no capability)
        [port] = reply["result"]["ports"]
        assert "dockhand test page" in await _http_get(f"http://127.0.0.1:{port['host_port']}/")


async def test_an_allowed_dropped_capability_can_be_added_back(workers: WorkerFactory, session_id: str) -> None:
    worker = workers.start("caps", DOCKHAND_ALLOWED_CAPABILITIES="NET_RAW")
    try:
        async with connect_client(worker, session_id) as client:
            ws = client.ws_id("cap")
            async with removed_after(client, ws):
                reply = await client.send("workspace.create", create_payload(client, ws, cap_add=["NET_RAW"]))
                assert reply["status"] == "succeeded", reply
                out = await client.send(
                    "workspace.exec", {"workspace_id": ws, "command": ["grep", "CapEff", "/proc/self/status"]}
                )
                assert int(out["result"]["stdout"].split()[1], 16) & (1 << 13)
    finally:
        worker.stop()


async def _http_get(url: str, attempts: int = 50) -> str:
    """GET a URL on 127.0.0.1, retrying while the server starts."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for _ in range(attempts):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return await response.text()
            await asyncio.sleep(0.2)
    raise AssertionError(f"no answer from {url}")
