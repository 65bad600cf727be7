"""Network commands against the real daemon."""

from __future__ import annotations

import aiodocker

from .conftest import Client


async def test_ensure_connect_disconnect_remove(client: Client, docker: aiodocker.Docker, test_image: str) -> None:
    name = f"dhtest-{client.session_id}-net-{client.ws_id('n')[-4:]}"
    first = await client.send("network.ensure", {"name": name, "labels": client.labels(), "internal": True})
    assert first["status"] == "succeeded", first
    assert first["result"]["created"] is True
    second = await client.send("network.ensure", {"name": name})
    assert second["result"] == {**first["result"], "created": False}
    info = await docker.networks.get(name)
    details = await info.show()
    assert details["Labels"]["dockhand.managed"] == "true"
    assert details["Internal"] is True

    ws = client.ws_id()
    await client.send("workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels()})
    for _ in range(2):  # connecting twice is fine
        connected = await client.send("network.connect", {"network": name, "workspace_id": ws, "aliases": ["api"]})
        assert connected["status"] == "succeeded", connected
        assert connected["result"] == {"network": name, "workspace_id": ws}
    inspect = await client.send("workspace.inspect", {"workspace_id": ws})
    assert name in inspect["result"]["networks"]
    container = await docker.containers.container(inspect["result"]["container_id"]).show()
    assert "api" in container["NetworkSettings"]["Networks"][name]["Aliases"]

    busy = await client.send("network.remove", {"name": name})
    assert busy["status"] == "failed", busy
    assert busy["error"]["code"] == "conflict"

    for _ in range(2):  # disconnecting twice is fine
        disconnected = await client.send("network.disconnect", {"network": name, "workspace_id": ws})
        assert disconnected["status"] == "succeeded", disconnected
    inspect = await client.send("workspace.inspect", {"workspace_id": ws})
    assert name not in inspect["result"]["networks"]

    removed = await client.send("network.remove", {"name": name})
    assert removed["result"] == {"name": name, "removed": True}
    again = await client.send("network.remove", {"name": name})
    assert again["result"] == {"name": name, "removed": False}


async def test_connect_to_missing_network_is_not_found(client: Client, test_image: str) -> None:
    ws = client.ws_id()
    await client.send("workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels()})
    reply = await client.send("network.connect", {"network": f"nope-{client.session_id}", "workspace_id": ws})
    assert reply["status"] == "failed"
    assert reply["error"]["code"] == "not_found"
    assert f"nope-{client.session_id}" in reply["error"]["message"]


async def test_unmanaged_network_is_not_removed(client: Client, docker: aiodocker.Docker) -> None:
    name = f"dhtest-{client.session_id}-foreign"
    network = await docker.networks.create({"Name": name, "Labels": client.labels()})
    try:
        reply = await client.send("network.remove", {"name": name})
        assert reply["status"] == "failed"
        assert reply["error"]["code"] == "forbidden"
        assert (await network.show())["Name"] == name
    finally:
        await network.delete()


async def test_a_network_named_by_its_id(client: Client, docker: aiodocker.Docker, test_image: str) -> None:
    """Found by the fuzzer: a container's networks are keyed by name, so a network given by id
    was never disconnected (yet `succeeded`), and a discovery workspace created on it by id was
    never announced (its dockhand.network label held the id)."""
    name = f"dhtest-{client.session_id}-byid-{client.ws_id('n')[-4:]}"
    ensured = await client.send("network.ensure", {"name": name, "labels": client.labels()})
    network_id = ensured["result"]["network_id"]
    ws = client.ws_id()
    domain = f"{ws}.example.test"
    created = await client.send(
        "workspace.create",
        {
            "workspace_id": ws,
            "image": test_image,
            "labels": client.labels(),
            "network": network_id,
            "discovery": {"domain": domain, "port": 8080},
        },
    )
    assert created["status"] == "succeeded", created
    container = await docker.containers.container(created["result"]["container_id"]).show()
    assert container["Config"]["Labels"]["dockhand.network"] == name
    listed = await client.send("discovery.list", {})
    assert [s["domain"] for s in listed["result"]["services"] if s["domain"] == domain] == [domain]

    disconnected = await client.send("network.disconnect", {"network": network_id, "workspace_id": ws})
    assert disconnected["status"] == "succeeded", disconnected
    container = await docker.containers.container(created["result"]["container_id"]).show()
    assert name not in container["NetworkSettings"]["Networks"]
    await client.send("workspace.remove", {"workspace_id": ws, "force": True})
    await client.send("network.remove", {"name": name})
