"""Least-privilege broker users (scripts/broker-users) against the real broker: a worker runs as
its role's user, a sender's and an event consumer's users do their jobs and nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.abc
import pytest
from aiormq.exceptions import ChannelAccessRefused
from yarl import URL

from .conftest import AMQP_URL, REPO, TEST_IMAGE, TEST_LABEL, WorkerFactory, WorkerProcess, request

pytestmark = pytest.mark.slow  # a dozen rabbitmqctl calls, ~1 s each

SCRIPT = REPO / "scripts" / "broker-users"


@dataclass
class BrokerUser:
    name: str
    password: str

    @property
    def url(self) -> str:
        return str(URL(AMQP_URL).with_user(self.name).with_password(self.password))


def broker_users(*args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DOCKHAND_BROKER_PASSWORD"}
    out = subprocess.run(
        [str(SCRIPT), *args], input=password, capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def users(session_id: str, workers: WorkerFactory) -> Iterator[dict[str, BrokerUser]]:
    """A worker, a sender and a consumer user for the session's prefix (deleted afterwards)."""
    made: dict[str, BrokerUser] = {}
    host = f"t{session_id}-roles"
    roles = {
        "worker": ["--host-id", host],
        "sender": [],
        "consumer": [],
    }
    try:
        for role, extra in roles.items():
            user = BrokerUser(f"dhtest-{session_id}-{role}", secrets.token_urlsafe(16))
            made[role] = user
            # The password on stdin, as an operator would pipe it in (never on argv).
            broker_users(role, user.name, "--prefix", workers.prefix, *extra, password=user.password + "\n")
        # Idempotent: a second run (new password) converges instead of failing.
        user = made["sender"]
        user.password = secrets.token_urlsafe(16)
        broker_users("sender", user.name, "--prefix", workers.prefix, password=user.password + "\n")
        yield made
    finally:
        for user in made.values():
            broker_users("delete", user.name)


@pytest.fixture(scope="module")
def role_worker(workers: WorkerFactory, users: dict[str, BrokerUser]) -> Iterator[WorkerProcess]:
    worker = workers.start("roles", DOCKHAND_AMQP_URL=users["worker"].url, DOCKHAND_HEALTH_INTERVAL_S="1")
    yield worker
    assert worker.stop() == 0, worker.log()[-3000:]
    assert "ACCESS_REFUSED" not in worker.log(), worker.log()[-3000:]


@contextlib.asynccontextmanager
async def connect(user: BrokerUser) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await aio_pika.connect(user.url, timeout=10)
    async with connection:
        yield connection


async def refused_publish(
    connection: aio_pika.abc.AbstractConnection, exchange: str, routing_key: str, body: dict[str, Any]
) -> ChannelAccessRefused:
    """Publish with confirms on a fresh channel and return the broker's refusal (RabbitMQ answers a
    forbidden publish only by closing the channel with 403 ACCESS_REFUSED)."""
    channel = await connection.channel(publisher_confirms=True)
    target = await channel.get_exchange(exchange, ensure=False)
    with pytest.raises(ChannelAccessRefused) as refused:
        await asyncio.wait_for(target.publish(aio_pika.Message(json.dumps(body).encode()), routing_key=routing_key), 10)
    assert channel.is_closed
    return refused.value


async def test_sender_sends_commands_and_cannot_publish_events(
    role_worker: WorkerProcess, users: dict[str, BrokerUser], session_id: str
) -> None:
    prefix = role_worker.prefix
    async with connect(users["sender"]) as connection:
        # As the sender (conftest.request: a dockhand client of its own, a server-named reply queue).
        reply = await request(
            users["sender"].url, prefix, role_worker.host_id, {"command_id": uuid.uuid4().hex, "type": "host.info"}
        )
        assert reply["status"] == "succeeded", reply
        assert reply["host_id"] == role_worker.host_id

        # A fake event in the host's name: refused (this is what any sender could do before).
        fake = {"type": "container", "host_id": role_worker.host_id, "action": "start"}
        refused = await refused_publish(connection, f"{prefix}.events", f"{role_worker.host_id}.container.start", fake)
        assert "ACCESS_REFUSED" in str(refused)
        await refused_publish(connection, f"{prefix}.health", f"{role_worker.host_id}.heartbeat", fake)
        # Nor a fake reply to somebody's reply queue through the default exchange.
        channel = await connection.channel(publisher_confirms=True)
        with pytest.raises(ChannelAccessRefused):
            await channel.default_exchange.publish(aio_pika.Message(b"{}"), routing_key="amq.gen-anything")

        # Without --read-results a sender does not see other senders' results.
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        with pytest.raises(ChannelAccessRefused):
            await queue.bind(f"{prefix}.results", routing_key="#")


async def test_consumer_receives_events_and_cannot_send_commands(
    role_worker: WorkerProcess, users: dict[str, BrokerUser], session_id: str
) -> None:
    prefix, host = role_worker.prefix, role_worker.host_id
    seen: list[tuple[str, dict[str, Any]]] = []
    async with connect(users["consumer"]) as consumer:
        channel = await consumer.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(f"{prefix}.events", routing_key=f"{host}.#")
        await queue.bind(f"{prefix}.health", routing_key=f"{host}.#")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            seen.append((message.routing_key or "", json.loads(message.body)))

        await queue.consume(on_message, no_ack=True)
        # Docker events the worker publishes as its role's user: a workspace comes and goes.
        ws = f"t{session_id}-roles-{secrets.token_hex(2)}"
        payload = {"workspace_id": ws, "image": TEST_IMAGE, "labels": {TEST_LABEL: session_id}}
        created = await request(
            users["sender"].url,
            prefix,
            host,
            {"command_id": uuid.uuid4().hex, "type": "workspace.create", "payload": payload},
        )
        try:
            assert created["status"] == "succeeded", created
            for _ in range(200):
                keys = {key for key, _ in seen}
                if f"{host}.heartbeat" in keys and f"{host}.container.start" in keys:
                    break
                await asyncio.sleep(0.1)
            keys = {key for key, _ in seen}
            assert f"{host}.heartbeat" in keys, keys
            assert f"{host}.container.start" in keys, keys
        finally:
            removed = await request(
                users["sender"].url,
                prefix,
                host,
                {
                    "command_id": uuid.uuid4().hex,
                    "type": "workspace.remove",
                    "payload": {"workspace_id": ws, "force": True},
                },
            )
            assert removed["status"] == "succeeded", removed

        # A consumer may not send commands, nor publish events.
        command = {"command_id": uuid.uuid4().hex, "type": "host.info"}
        refused = await refused_publish(consumer, f"{prefix}.commands", f"{host}.host.info", command)
        assert "ACCESS_REFUSED" in str(refused)
        await refused_publish(consumer, f"{prefix}.events", f"{host}.container.start", {"fake": True})
        # ... nor take over the worker's command queue.
        channel = await consumer.channel()
        with pytest.raises(ChannelAccessRefused):
            await channel.declare_queue(f"{prefix}.commands.{host}", passive=False, durable=True)


async def test_worker_user_publishes_only_under_its_own_host_id(
    role_worker: WorkerProcess, users: dict[str, BrokerUser], session_id: str
) -> None:
    prefix = role_worker.prefix
    async with connect(users["worker"]) as connection:
        # Its own routing key is fine (with confirms, so the broker has accepted it) ...
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.get_exchange(f"{prefix}.events", ensure=False)
        await events.publish(aio_pika.Message(b"{}"), routing_key=f"{role_worker.host_id}.test.ping")
        # ... another host's is refused by the topic permission, and so is sending commands.
        other = f"t{session_id}-a"
        refused = await refused_publish(connection, f"{prefix}.events", f"{other}.container.start", {"fake": True})
        assert "ACCESS_REFUSED" in str(refused)
        await refused_publish(connection, f"{prefix}.results", f"{other}.host.info.succeeded", {"fake": True})
        await refused_publish(connection, f"{prefix}.commands", f"{other}.host.info", {"fake": True})
        # Binding its queue to every host's commands (`#`) is refused too.
        channel = await connection.channel()
        queue = await channel.get_queue(f"{prefix}.commands.{role_worker.host_id}", ensure=False)
        with pytest.raises(ChannelAccessRefused):
            await queue.bind(f"{prefix}.commands", routing_key="#")


async def _cli(user: BrokerUser, prefix: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dockhand.cli",
        *args,
        "--exchange-prefix",
        prefix,
        cwd=REPO,
        # The URL (with its password) from the environment, as a person would keep it off argv.
        env={**os.environ, "DOCKHAND_AMQP_URL": user.url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_works_with_the_role_users(role_worker: WorkerProcess, users: dict[str, BrokerUser]) -> None:
    prefix, host = role_worker.prefix, role_worker.host_id
    code, out, err = await _cli(users["sender"], prefix, "send", "host.info", "--host", host, "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "succeeded"
    # `dockhand events` as a consumer: the exchanges exist, so it only looks them up (a consumer
    # may not declare them) and reads a heartbeat.
    tail = ["events", "--host", host, "--kind", "health", "--count", "1", "--timeout", "20"]
    code, out, err = await _cli(users["consumer"], prefix, *tail)
    assert code == 0, err
    assert "heartbeat" in out, out
    # The consumer's `send` is refused in one line, not a traceback.
    code, out, err = await _cli(users["consumer"], prefix, "send", "host.info", "--host", host, "--timeout", "5")
    assert code == 69, (code, err)
    assert "refused" in err, err
    assert "Traceback" not in err


async def test_worker_user_dead_letters_a_redacted_copy(
    role_worker: WorkerProcess, users: dict[str, BrokerUser], session_id: str
) -> None:
    """A rejected command carrying a secret: the worker (as its role's user) publishes a redacted
    copy to ``<prefix>.dead`` -- allowed by its topic permission for its own routing keys."""
    prefix, host = role_worker.prefix, role_worker.host_id
    secret = f"pw-{secrets.token_hex(8)}"
    message_id = uuid.uuid4().hex
    command = {
        "command_id": uuid.uuid4().hex,
        "type": "workspace.create",
        "payload": {
            "workspace_id": f"t{session_id}-dl",
            "image": TEST_IMAGE,
            "registry_auth": {"username": "u", "password": secret},
            "privileged": True,  # not in the contract: rejected
        },
    }
    reply = await request(users["sender"].url, prefix, host, command, message_id=message_id)
    assert reply["status"] == "rejected", reply
    # The dead-letter queue, read as guest (no role reads it): the copy, without the password.
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(f"{prefix}.commands.dead", ensure=False)
        found = None
        for _ in range(300):
            message = await queue.get(fail=False, no_ack=False)
            if message is None:
                await asyncio.sleep(0.1)
                continue
            if message.message_id == message_id:
                await message.ack()
                found = message
                break
            # someone else's: left unacked, so it goes back to the queue when the channel closes
        assert found is not None, role_worker.log()[-3000:]
        assert secret.encode() not in found.body
        assert found.headers.get("x-dockhand-redacted")
    assert "ACCESS_REFUSED" not in role_worker.log()
