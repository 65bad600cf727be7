"""Tenancy against the real broker: two throwaway RabbitMQ users, a worker with DOCKHAND_TENANCY=user.

alice and bob are broker users of their own (created with rabbitmqctl for this module, allowed only
this session's exchanges and their own server-named queues, deleted at the end). They publish with
``user_id`` set, as RabbitMQ requires it to be their own. ``guest`` (the worker's user) is the
worker's admin (``DOCKHAND_ADMIN_USERS``). Effects are checked with ``docker inspect``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiodocker
import aiormq
import pytest

from .conftest import AMQP_URL, Client, WorkerFactory, WorkerProcess, connect_client

ADMIN = "guest"
PASSWORDS: dict[str, str] = {}  # broker user -> its throwaway password


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def users(session_id: str) -> Iterator[dict[str, str]]:
    """alice and bob: ``{short name: broker user}`` (passwords in ``PASSWORDS``)."""
    names = {short: f"dhtest-{session_id}-{short}" for short in ("alice", "bob")}
    # Only this session's exchanges and queues, and the server-named queues of their own clients.
    allowed = rf"^(dhtest-{session_id}\..*|amq\.gen-.*)$"
    created: list[str] = []
    try:
        for user in names.values():
            password = secrets.token_hex(12)
            _rabbitmqctl("add_user", user, password)
            created.append(user)
            PASSWORDS[user] = password
            _rabbitmqctl("set_permissions", "-p", "/", user, allowed, allowed, allowed)
        yield names
    finally:
        for user in created:
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                _rabbitmqctl("delete_user", user)


@pytest.fixture(scope="module")
def tenant_worker(workers: WorkerFactory, users: dict[str, str]) -> Iterator[WorkerProcess]:
    worker = workers.start("tenancy", DOCKHAND_TENANCY="user", DOCKHAND_ADMIN_USERS=ADMIN)
    yield worker
    # Stopped with the module: a second worker on this daemon would publish every later
    # test's container events a second time, under its own host id.
    worker.stop()


def _url_for(user: str) -> str:
    parts = urlsplit(AMQP_URL)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{PASSWORDS[user]}@{host}"))


@dataclass
class Tenant:
    """A client connected as one broker user, publishing with ``user_id`` = that user."""

    user: str
    client: Client
    url: str

    async def send(
        self,
        command_type: str,
        payload: dict[str, Any] | None = None,
        *,
        command_id: str | None = None,
        user_id: str | None = "",
    ) -> dict[str, Any]:
        """``user_id`` "" (default): this tenant's own; ``None``: the property left out."""
        client = self.client
        body = client.command(command_type, payload, command_id=command_id)
        correlation_id = await client.publish(
            body, f"{client.worker.host_id}.{command_type}", user_id=self.user if user_id == "" else user_id
        )
        return await client.reply(correlation_id, 60)


@contextlib.asynccontextmanager
async def tenant(worker: WorkerProcess, session_id: str, user: str) -> AsyncIterator[Tenant]:
    url = AMQP_URL if user == ADMIN else _url_for(user)
    async with connect_client(worker, session_id, url) as client:
        yield Tenant(user, client, url)


@pytest.fixture
async def alice(tenant_worker: WorkerProcess, session_id: str, users: dict[str, str]) -> AsyncIterator[Tenant]:
    async with tenant(tenant_worker, session_id, users["alice"]) as t:
        yield t


@pytest.fixture
async def bob(tenant_worker: WorkerProcess, session_id: str, users: dict[str, str]) -> AsyncIterator[Tenant]:
    async with tenant(tenant_worker, session_id, users["bob"]) as t:
        yield t


@pytest.fixture
async def admin(tenant_worker: WorkerProcess, session_id: str) -> AsyncIterator[Tenant]:
    async with tenant(tenant_worker, session_id, ADMIN) as t:
        yield t


def _create(t: Tenant, image: str, ws: str, **extra: Any) -> dict[str, Any]:
    return {"workspace_id": ws, "image": image, "labels": t.client.labels(), **extra}


def _forbidden(reply: dict[str, Any]) -> None:
    assert reply["status"] == "failed", reply
    assert reply["error"]["code"] == "forbidden", reply


async def test_cross_owner_commands_are_forbidden_and_touch_nothing(
    alice: Tenant, bob: Tenant, admin: Tenant, docker: aiodocker.Docker, test_image: str
) -> None:
    ws = alice.client.ws_id("alice")
    project = f"p{alice.client.session_id}"
    volume = f"{ws}-data"
    shared = {"type": "volume", "source": volume, "target": "/data", "share": "project"}
    created = await alice.send("workspace.create", _create(alice, test_image, ws, project=project, mounts=[shared]))
    assert created["status"] == "succeeded", created
    assert created["result"]["owner"] == alice.user
    container = docker.containers.container(created["result"]["container_id"])
    before = await container.show()
    assert before["Config"]["Labels"]["dockhand.owner"] == alice.user
    # Its own default network, stamped with its owner too.
    [network] = before["NetworkSettings"]["Networks"]
    assert network.startswith(f"dhtest-{alice.client.session_id}-")
    assert network != f"dhtest-{alice.client.session_id}"
    net = await docker.networks.get(network)
    assert (await net.show())["Labels"]["dockhand.owner"] == alice.user

    for command_type, payload in [
        ("workspace.inspect", {"workspace_id": ws}),
        ("workspace.stop", {"workspace_id": ws, "timeout_s": 0}),
        ("workspace.restart", {"workspace_id": ws, "timeout_s": 0}),
        ("workspace.exec", {"workspace_id": ws, "command": ["touch", "/tmp/bob-was-here"]}),
        ("workspace.logs", {"workspace_id": ws}),
        ("workspace.remove", {"workspace_id": ws, "force": True}),
        ("network.connect", {"network": network, "workspace_id": ws}),
        ("network.remove", {"name": network}),
        ("network.ensure", {"name": network}),
    ]:
        reply = await bob.send(command_type, payload)
        _forbidden(reply)
        if command_type.startswith("workspace."):  # (a network's name has its owner's slug in it)
            assert alice.user not in reply["error"]["message"]
    # Taking the id with another spec: forbidden, not conflict (which would say the spec differs).
    reply = await bob.send("workspace.create", _create(bob, test_image, ws, env={"X": "1"}))
    _forbidden(reply)
    # A workspace of bob's own may neither join alice's network nor mount her volume, even one she
    # shared with the project bob names; nothing of the attempt is left behind.
    other = bob.client.ws_id("bob")
    for extra in ({"network": network}, {"project": project, "mounts": [{**shared, "share": "none"}]}):
        reply = await bob.send("workspace.create", _create(bob, test_image, other, **extra))
        _forbidden(reply)
        assert "belongs to another owner" in reply["error"]["message"], reply
        with pytest.raises(aiodocker.DockerError):
            await docker.containers.container(f"dockhand-{other}").show()
    assert (await (await docker.volumes.get(volume)).show())["Labels"]["dockhand.owner"] == alice.user

    after = await container.show()
    assert after["State"]["Running"] is True
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]  # never stopped or restarted
    assert after["ExecIDs"] == before["ExecIDs"]  # no exec was even created
    assert after["Config"]["Labels"] == before["Config"]["Labels"]

    # The owner and an admin may.
    assert (await alice.send("workspace.inspect", {"workspace_id": ws}))["status"] == "succeeded"
    seen = await admin.send("workspace.inspect", {"workspace_id": ws})
    assert seen["status"] == "succeeded", seen
    assert seen["result"]["owner"] == alice.user
    removed = await admin.send("workspace.remove", {"workspace_id": ws, "force": True, "remove_volumes": True})
    assert removed["result"]["removed"] is True, removed


async def test_lists_show_a_sender_only_its_own_and_ids_are_per_sender(
    alice: Tenant, bob: Tenant, admin: Tenant, docker: aiodocker.Docker, test_image: str
) -> None:
    mine = alice.client.ws_id("alice")
    theirs = bob.client.ws_id("bob")
    command_id = f"shared-{uuid.uuid4().hex[:8]}"
    domain = f"{mine}.example.test"
    alices = _create(alice, test_image, mine, discovery={"domain": domain, "port": 8080})
    a = await alice.send("workspace.create", alices, command_id=command_id)
    assert a["status"] == "succeeded", a
    # Bob's command with alice's command_id is bob's own command: it runs (for bob), and he is
    # not answered with alice's stored result.
    b = await bob.send("workspace.create", _create(bob, test_image, theirs), command_id=command_id)
    assert b["status"] == "succeeded", b
    assert b["result"]["workspace_id"] == theirs
    assert b["result"]["owner"] == bob.user
    assert b["result"]["created"] is True
    # Alice's repeat is still answered with her own result.
    again = await alice.send("workspace.create", alices, command_id=command_id)
    assert again == a, again
    # Two owners, two default networks: their workspaces cannot reach each other by default.
    assert set(a["result"]["networks"]).isdisjoint(b["result"]["networks"])

    async def listed(t: Tenant) -> set[str]:
        reply = await t.send("workspace.list")
        assert reply["status"] == "succeeded", reply
        return {w["workspace_id"] for w in reply["result"]["workspaces"]}

    assert mine in await listed(alice)
    assert theirs not in await listed(alice)
    assert theirs in await listed(bob)
    assert mine not in await listed(bob)
    assert {mine, theirs} <= await listed(admin)

    async def services(t: Tenant) -> set[str]:
        reply = await t.send("discovery.list")
        assert reply["status"] == "succeeded", reply
        return {s["domain"] for s in reply["result"]["services"]}

    assert domain in await services(alice)
    assert domain not in await services(bob)
    assert domain in await services(admin)

    for ws in (mine, theirs):
        await admin.send("workspace.remove", {"workspace_id": ws, "force": True})


async def test_a_command_without_user_id_is_rejected(alice: Tenant, admin: Tenant) -> None:
    for who in (alice, admin):
        reply = await who.send("host.info", user_id=None)
        assert reply["status"] == "rejected", reply
        assert reply["error"]["code"] == "forbidden"
        assert "user_id" in reply["error"]["message"]
    assert (await alice.send("host.info"))["status"] == "succeeded"


async def test_rabbitmq_refuses_a_user_id_that_is_not_the_senders(
    alice: Tenant, bob: Tenant, tenant_worker: WorkerProcess
) -> None:
    # What makes user_id trustworthy: bob cannot publish as alice.
    connection = await aio_pika.connect(bob.url)
    async with connection:
        channel = await connection.channel()  # publisher confirms: the refusal comes back here
        commands = await channel.get_exchange(f"{tenant_worker.prefix}.commands", ensure=False)
        body = {"command_id": uuid.uuid4().hex, "type": "host.info"}
        correlation_id = uuid.uuid4().hex
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="user_id"):
            await commands.publish(
                aio_pika.Message(
                    json.dumps(body).encode(),
                    correlation_id=correlation_id,
                    reply_to=bob.client.reply_to,
                    user_id=alice.user,
                ),
                routing_key=f"{tenant_worker.host_id}.host.info",
            )
    await bob.client.no_reply(correlation_id, 1.0)
