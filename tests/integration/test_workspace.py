"""Workspace commands end to end: AMQP in, real Docker effects, results out."""

from __future__ import annotations

import os
from typing import Any

import aiodocker
import pytest

from .conftest import Client, WorkerProcess


def create_payload(client: Client, test_image: str, ws: str, **extra: Any) -> dict[str, Any]:
    return {"workspace_id": ws, "image": test_image, "labels": client.labels(), **extra}


async def test_create_runs_a_managed_workspace(client: Client, docker: aiodocker.Docker, test_image: str) -> None:
    ws = client.ws_id()
    reply = await client.send(
        "workspace.create",
        create_payload(client, test_image, ws, name="My WS", project="proj", stage="dev", env={"GREETING": "hi"}),
    )
    assert reply["status"] == "succeeded", reply
    result = reply["result"]
    assert result["created"] is True
    assert result["state"] == "running"
    assert result["container_name"] == f"dockhand-{ws}"
    assert result["host_id"] == client.worker.host_id
    # EXPOSE 8080 of the image is published on 127.0.0.1 with an assigned port.
    assert [(p["container_port"], p["host_ip"]) for p in result["ports"]] == [(8080, "127.0.0.1")]
    assert result["ports"][0]["host_port"] > 0
    assert set(result["networks"]) == {f"dhtest-{client.session_id}"}

    info = await docker.containers.container(result["container_id"]).show()
    labels = info["Config"]["Labels"]
    assert labels["dockhand.managed"] == "true"
    assert labels["dockhand.host"] == client.worker.host_id
    assert labels["dockhand.workspace.id"] == ws
    assert labels["dockhand.workspace.name"] == "My WS"
    assert labels["dockhand.project"] == "proj"
    assert labels["dockhand.stage"] == "dev"
    assert len(labels["dockhand.spec-hash"]) == 32
    assert "dockhand.created" in labels
    host_config = info["HostConfig"]
    assert "no-new-privileges:true" in host_config["SecurityOpt"]
    assert host_config["Privileged"] is False
    # Defaults from settings: 1 CPU, 512 MiB, 512 pids.
    assert host_config["NanoCpus"] == 1_000_000_000
    assert host_config["Memory"] == 512 * 1024 * 1024
    assert host_config["PidsLimit"] == 512
    assert "GREETING=hi" in info["Config"]["Env"]
    assert result["ports"][0]["host_port"] == int(info["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])


async def test_resources_are_capped_at_the_maxima(client: Client, docker: aiodocker.Docker, test_image: str) -> None:
    ws = client.ws_id()
    payload = create_payload(
        client, test_image, ws, resources={"cpus": 64.0, "memory_bytes": 2**40, "pids": 999_999}, start=False
    )
    reply = await client.send("workspace.create", payload)
    assert reply["status"] == "succeeded", reply
    assert reply["result"]["state"] == "created"
    host_config = (await docker.containers.container(reply["result"]["container_id"]).show())["HostConfig"]
    # max_cpus is 4, but Docker refuses more than the host has: the cap is the smaller.
    assert host_config["NanoCpus"] == min(4, os.cpu_count() or 1) * 1_000_000_000
    assert host_config["Memory"] == 8 * 1024**3
    assert host_config["PidsLimit"] == 4096


async def test_create_again_same_spec_is_not_created_twice(
    client: Client, docker: aiodocker.Docker, test_image: str
) -> None:
    ws = client.ws_id()
    payload = create_payload(client, test_image, ws, project="p1")
    first = await client.send("workspace.create", payload)
    second = await client.send("workspace.create", payload)
    assert first["status"] == second["status"] == "succeeded"
    assert first["result"]["created"] is True
    assert second["result"]["created"] is False
    assert second["result"]["container_id"] == first["result"]["container_id"]
    containers = await docker.containers.list(all=True, filters={"label": [f"dockhand.workspace.id={ws}"]})
    assert len(containers) == 1


async def test_create_again_with_a_different_spec_conflicts(client: Client, test_image: str) -> None:
    ws = client.ws_id()
    assert (await client.send("workspace.create", create_payload(client, test_image, ws)))["status"] == "succeeded"
    reply = await client.send("workspace.create", create_payload(client, test_image, ws, env={"X": "1"}))
    assert reply["status"] == "failed"
    assert reply["error"]["code"] == "conflict"
    assert ws in reply["error"]["message"]


async def test_lifecycle_is_idempotent_per_state(client: Client, docker: aiodocker.Docker, test_image: str) -> None:
    ws = client.ws_id()
    created = await client.send("workspace.create", create_payload(client, test_image, ws))
    container = docker.containers.container(created["result"]["container_id"])

    start = await client.send("workspace.start", {"workspace_id": ws})
    assert start["status"] == "succeeded", start
    assert start["result"]["state"] == "running"

    for _ in range(2):  # stop of a stopped workspace succeeds too
        stop = await client.send("workspace.stop", {"workspace_id": ws, "timeout_s": 5})
        assert stop["status"] == "succeeded", stop
        assert stop["result"]["state"] == "exited"
    assert (await container.show())["State"]["Running"] is False

    restart = await client.send("workspace.restart", {"workspace_id": ws, "timeout_s": 1})
    assert restart["status"] == "succeeded", restart
    assert restart["result"]["state"] == "running"
    inspect = await client.send("workspace.inspect", {"workspace_id": ws})
    assert inspect["result"]["state"] == "running"
    assert inspect["result"]["started_at"] is not None

    running_remove = await client.send("workspace.remove", {"workspace_id": ws})
    assert running_remove["status"] == "failed", running_remove
    assert running_remove["error"]["code"] == "conflict"

    removed = await client.send("workspace.remove", {"workspace_id": ws, "force": True})
    assert removed["result"] == {"workspace_id": ws, "removed": True}
    with pytest.raises(aiodocker.DockerError):
        await container.show()
    again = await client.send("workspace.remove", {"workspace_id": ws})
    assert again["status"] == "succeeded"
    assert again["result"] == {"workspace_id": ws, "removed": False}

    missing = await client.send("workspace.start", {"workspace_id": ws})
    assert missing["status"] == "failed"
    assert missing["error"]["code"] == "not_found"
    assert ws in missing["error"]["message"]


async def test_list_filters_by_project_and_state(client: Client, test_image: str) -> None:
    project = f"list{client.session_id}"
    a, b = client.ws_id("a"), client.ws_id("b")
    await client.send("workspace.create", create_payload(client, test_image, a, project=project))
    await client.send("workspace.create", create_payload(client, test_image, b, project=project, start=False))
    listed = await client.send("workspace.list", {"project": project})
    assert [w["workspace_id"] for w in listed["result"]["workspaces"]] == sorted([a, b])
    running = await client.send("workspace.list", {"project": project, "state": "running"})
    assert [w["workspace_id"] for w in running["result"]["workspaces"]] == [a]


async def test_exec_returns_exit_code_and_output(client: Client, test_image: str) -> None:
    ws = client.ws_id()
    await client.send("workspace.create", create_payload(client, test_image, ws))
    reply = await client.send(
        "workspace.exec",
        {
            "workspace_id": ws,
            "command": ["sh", "-c", 'echo "out $V"; echo oops >&2; pwd; exit 7'],
            "env": {"V": "42"},
            "working_dir": "/www",
        },
    )
    assert reply["status"] == "succeeded", reply
    assert reply["result"] == {"exit_code": 7, "stdout": "out 42\n/www\n", "stderr": "oops\n", "truncated": False}

    slow = await client.send("workspace.exec", {"workspace_id": ws, "command": ["sleep", "30"], "timeout_s": 0.5})
    assert slow["status"] == "failed"
    assert slow["error"]["code"] == "timeout"


async def test_logs_tail(client: Client, test_image: str) -> None:
    ws = client.ws_id()
    payload = create_payload(client, test_image, ws, command=["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done"])
    await client.send("workspace.create", payload)
    await client.send("workspace.stop", {"workspace_id": ws})
    reply = await client.send("workspace.logs", {"workspace_id": ws, "tail": 2})
    assert reply["status"] == "succeeded", reply
    assert reply["result"] == {"lines": ["line4", "line5"], "truncated": False}


async def test_volume_and_bind_mounts(
    client: Client, docker: aiodocker.Docker, test_image: str, worker: WorkerProcess
) -> None:
    ws = client.ws_id()
    volume = f"{ws}-data"
    host_dir = worker.bind_root / ws
    host_dir.mkdir()
    (host_dir / "hello.txt").write_text("from the host")
    payload = create_payload(
        client,
        test_image,
        ws,
        mounts=[
            {"type": "volume", "source": volume, "target": "/data"},
            {"type": "bind", "source": str(host_dir), "target": "/host", "read_only": True},
            {"type": "tmpfs", "target": "/scratch"},
        ],
    )
    reply = await client.send("workspace.create", payload)
    assert reply["status"] == "succeeded", reply
    out = await client.send(
        "workspace.exec", {"workspace_id": ws, "command": ["sh", "-c", "cat /host/hello.txt; touch /data/x && echo ok"]}
    )
    assert out["result"]["stdout"] == "from the hostok\n"
    volume_info = await docker.volumes.get(volume)
    assert volume_info is not None
    removed = await client.send("workspace.remove", {"workspace_id": ws, "force": True, "remove_volumes": True})
    assert removed["result"]["removed"] is True
    with pytest.raises(aiodocker.DockerError):
        await docker.volumes.get(volume)


async def test_create_with_discovery_writes_labels(client: Client, docker: aiodocker.Docker, test_image: str) -> None:
    ws = client.ws_id()
    domain = f"{ws}.example.test"
    payload = create_payload(
        client, test_image, ws, discovery={"domain": domain, "port": 8080, "description": "test app"}
    )
    reply = await client.send("workspace.create", payload)
    labels = (await docker.containers.container(reply["result"]["container_id"]).show())["Config"]["Labels"]
    assert labels["dockhand.enabled"] == "true"
    assert labels["dockhand.domain"] == domain
    assert labels["dockhand.port"] == "8080"
    assert labels["dockhand.description"] == "test app"
    services = (await client.send("discovery.list"))["result"]["services"]
    mine = [s for s in services if s["domain"] == domain]
    assert len(mine) == 1
    assert mine[0]["port"] == 8080
    assert mine[0]["host_ports"]["8080/tcp"] == reply["result"]["ports"][0]["host_port"]


async def test_unmanaged_container_is_forbidden_and_untouched(
    client: Client, docker: aiodocker.Docker, test_image: str
) -> None:
    ws = client.ws_id()
    # Someone else's container that happens to have the workspace's name.
    container = await docker.containers.create({"Image": test_image, "Labels": client.labels()}, name=f"dockhand-{ws}")
    try:
        await container.start()
        for command_type, payload in [
            ("workspace.stop", {"workspace_id": ws}),
            ("workspace.remove", {"workspace_id": ws, "force": True}),
            ("workspace.exec", {"workspace_id": ws, "command": ["touch", "/tmp/touched"]}),
            ("workspace.restart", {"workspace_id": ws}),
            ("workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels()}),
        ]:
            reply = await client.send(command_type, payload)
            assert reply["status"] == "failed", (command_type, reply)
            assert reply["error"]["code"] == "forbidden", (command_type, reply)
        info = await container.show()
        assert info["State"]["Running"] is True
        assert info["RestartCount"] == 0
        assert info["State"]["StartedAt"] == (await container.show())["State"]["StartedAt"]
        listed = await client.send("workspace.list")
        assert ws not in [w["workspace_id"] for w in listed["result"]["workspaces"]]
    finally:
        await container.delete(force=True)


async def test_workspace_of_another_host_is_forbidden(
    client: Client, docker: aiodocker.Docker, test_image: str
) -> None:
    ws = client.ws_id()
    labels = {
        **client.labels(),
        "dockhand.managed": "true",
        "dockhand.host": "some-other-host",
        "dockhand.workspace.id": ws,
    }
    container = await docker.containers.create({"Image": test_image, "Labels": labels}, name=f"dockhand-{ws}")
    try:
        reply = await client.send("workspace.start", {"workspace_id": ws})
        assert reply["error"]["code"] == "forbidden"
        assert (await container.show())["State"]["Status"] == "created"
    finally:
        await container.delete(force=True)
