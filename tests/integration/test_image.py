"""Image pull (with registry auth against a real local registry) and inspect."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiodocker
import pytest

from .conftest import REGISTRY_IMAGE, REGISTRY_PASSWORD, REGISTRY_USER, Client

AUTH = {"username": REGISTRY_USER, "password": REGISTRY_PASSWORD}


@pytest.fixture
async def no_local_registry_image(docker: aiodocker.Docker) -> AsyncIterator[None]:
    """Make the pull real: drop our registry tag (only that tag) before and after."""
    with contextlib.suppress(aiodocker.DockerError):
        await docker.images.delete(REGISTRY_IMAGE)
    yield
    with contextlib.suppress(aiodocker.DockerError):
        await docker.images.delete(REGISTRY_IMAGE)


@pytest.mark.usefixtures("no_local_registry_image")
async def test_pull_with_auth_from_private_registry(client: Client, docker: aiodocker.Docker) -> None:
    replies = await asyncio.gather(
        *(client.send("image.pull", {"image": REGISTRY_IMAGE, "registry_auth": AUTH}) for _ in range(4))
    )
    for reply in replies:
        assert reply["status"] == "succeeded", reply
        assert reply["result"]["image"] == REGISTRY_IMAGE
        assert reply["result"]["digest"].startswith("sha256:")
    assert len({r["result"]["image_id"] for r in replies}) == 1
    assert (await docker.images.inspect(REGISTRY_IMAGE))["Id"] == replies[0]["result"]["image_id"]
    # The credentials appear nowhere: not in results, not in the worker's log.
    for reply in replies:
        assert REGISTRY_PASSWORD not in json.dumps(reply)
    assert REGISTRY_PASSWORD not in client.worker.log()


@pytest.mark.usefixtures("no_local_registry_image")
async def test_pull_without_auth_fails(client: Client) -> None:
    reply = await client.send("image.pull", {"image": REGISTRY_IMAGE})
    assert reply["status"] == "failed", reply
    assert reply["error"]["code"] == "image_pull_failed"
    assert REGISTRY_IMAGE in reply["error"]["message"]

    wrong = await client.send(
        "image.pull",
        {"image": REGISTRY_IMAGE, "registry_auth": {"username": REGISTRY_USER, "password": "wrong-pw-xyz"}},
    )
    assert wrong["error"]["code"] == "image_pull_failed"
    assert "wrong-pw-xyz" not in json.dumps(wrong)
    assert "wrong-pw-xyz" not in client.worker.log()


@pytest.mark.usefixtures("no_local_registry_image")
async def test_create_pulls_missing_image_with_auth(client: Client) -> None:
    ws = client.ws_id()
    never = await client.send(
        "workspace.create", {"workspace_id": ws, "image": REGISTRY_IMAGE, "pull": "never", "labels": client.labels()}
    )
    assert never["status"] == "failed"
    assert never["error"]["code"] == "image_not_found"
    created = await client.send(
        "workspace.create",
        {"workspace_id": ws, "image": REGISTRY_IMAGE, "registry_auth": AUTH, "labels": client.labels()},
    )
    assert created["status"] == "succeeded", created
    assert created["result"]["state"] == "running"
    assert REGISTRY_PASSWORD not in json.dumps(created)
    await client.send("workspace.remove", {"workspace_id": ws, "force": True})


async def test_image_inspect(client: Client, test_image: str) -> None:
    reply = await client.send("image.inspect", {"image": test_image})
    assert reply["status"] == "succeeded", reply
    assert reply["result"]["exposed_ports"] == ["8080/tcp"]
    assert reply["result"]["labels"]["dockhand-test.image"] == "1"
    assert reply["result"]["size"] > 0
    missing = await client.send("image.inspect", {"image": f"dockhand-test/missing-{client.session_id}:1"})
    assert missing["status"] == "failed"
    assert missing["error"]["code"] == "image_not_found"
