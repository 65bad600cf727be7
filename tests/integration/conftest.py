"""Fixtures for tests against a real RabbitMQ and a real Docker Engine.

``scripts/test`` starts both (and the local registry) and exports ``DOCKHAND_TEST_*``. Each
test session runs its own worker process under a unique host id and exchange prefix, so it
never sees another run's messages; everything it creates carries the session's labels and
is removed at the end, by label, with force.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiodocker
import pytest

from dockhand.client import Client as DockhandClient
from dockhand.client import Retry

AMQP_URL = os.environ.get("DOCKHAND_TEST_AMQP_URL", "amqp://guest:guest@localhost:5672/")
TEST_IMAGE = os.environ.get("DOCKHAND_TEST_IMAGE", "dockhand-test/busybox:latest")
REGISTRY_IMAGE = os.environ.get("DOCKHAND_TEST_REGISTRY_IMAGE", "127.0.0.1:5055/dockhand-test/busybox:latest")
REGISTRY_USER = os.environ.get("DOCKHAND_TEST_REGISTRY_USER", "dockhand")
REGISTRY_PASSWORD = os.environ.get("DOCKHAND_TEST_REGISTRY_PASSWORD", "s3cret-pw")
TEST_LABEL = "dockhand-test.session"
REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/integration needs both real services.
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.docker)
            item.add_marker(pytest.mark.rabbitmq)


@pytest.fixture(scope="session")
def session_id() -> str:
    return secrets.token_hex(3)


@dataclass
class WorkerProcess:
    """A ``python -m dockhand.worker`` subprocess and what it was configured with."""

    host_id: str
    prefix: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes]
    bind_root: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def http_url(self) -> str:
        """Base URL of the worker's HTTP endpoints, read from its start-up log line."""
        match = re.search(r"http: listening on ([0-9.]+):([0-9]+)", self.log())
        assert match, f"no HTTP endpoint in the log of {self.host_id}"
        return f"http://{match.group(1)}:{match.group(2)}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def _docker_cli(*args: str) -> str:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=False)
    return out.stdout


def remove_labelled(*labels: str) -> None:
    """Force-remove every container, network and volume carrying one of ``labels`` (key=value):
    all the containers first, since a network of one label (the session's default network, made
    by whichever worker came first) may still hold containers of another."""
    for label in labels:
        containers = _docker_cli("ps", "-aq", "--filter", f"label={label}").split()
        if containers:
            _docker_cli("rm", "-f", "-v", *containers)
    for label in labels:
        networks = _docker_cli("network", "ls", "-q", "--filter", f"label={label}").split()
        if networks:
            _docker_cli("network", "rm", *networks)
        volumes = _docker_cli("volume", "ls", "-q", "--filter", f"label={label}").split()
        if volumes:
            _docker_cli("volume", "rm", "-f", *volumes)


async def _delete_topology(prefix: str, host_ids: list[str]) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queues = [f"{prefix}.commands.{h}" for h in host_ids] + [f"{prefix}.commands.any", f"{prefix}.commands.dead"]
        for queue in queues:
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
        for name in ("commands", "results", "events", "health", "dead"):
            with contextlib.suppress(Exception):
                await channel.exchange_delete(f"{prefix}.{name}")


class WorkerFactory:
    """Starts workers for a session and cleans up after all of them."""

    def __init__(self, session_id: str, root: Path) -> None:
        self.session_id = session_id
        self.root = root
        self.prefix = f"dhtest-{session_id}"
        self.workers: list[WorkerProcess] = []

    def start(self, name: str = "a", *, wait: bool = True, **overrides: str) -> WorkerProcess:
        host_id = f"t{self.session_id}-{name}"
        bind_root = self.root / "binds"
        bind_root.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "DOCKHAND_AMQP_URL": AMQP_URL,
            "DOCKHAND_HOST_ID": host_id,
            "DOCKHAND_EXCHANGE_PREFIX": self.prefix,
            "DOCKHAND_DEFAULT_NETWORK": f"dhtest-{self.session_id}",
            "DOCKHAND_ALLOWED_BIND_ROOTS": str(bind_root),
            "DOCKHAND_ALLOWED_CAPABILITIES": "NET_BIND_SERVICE",
            "DOCKHAND_MAX_CONCURRENCY": "8",
            "DOCKHAND_DELIVERY_LIMIT": "3",
            "DOCKHAND_SHUTDOWN_GRACE_S": "20",
            "DOCKHAND_LOG_LEVEL": "INFO",
            # Per host: a restarted worker (or a standby) of the same host shares its journal.
            "DOCKHAND_STATE_DIR": str(self.root / f"state-{name}"),
            "DOCKHAND_HTTP_PORT": "0",  # many workers on one machine: each takes a free port
            **overrides,
        }
        log_path = self.root / f"worker-{name}-{len(self.workers)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dockhand.worker"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        worker = WorkerProcess(host_id, self.prefix, env, log_path, proc, bind_root)
        self.workers.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    @staticmethod
    def wait_ready(worker: WorkerProcess, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready: host " in worker.log():
                return
            if worker.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"worker {worker.host_id} did not become ready:\n{worker.log()[-4000:]}")

    def cleanup(self) -> None:
        for worker in self.workers:
            worker.stop()
        hosts = sorted({w.host_id for w in self.workers})
        remove_labelled(*(f"dockhand.host={h}" for h in hosts), f"{TEST_LABEL}={self.session_id}")
        asyncio.run(_delete_topology(self.prefix, sorted({w.host_id for w in self.workers})))


@pytest.fixture(scope="session")
def workers(session_id: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(session_id, tmp_path_factory.mktemp("workers"))
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="session")
def worker(workers: WorkerFactory) -> WorkerProcess:
    """The session's main worker (host ``t<session>-a``)."""
    return workers.start("a")


@dataclass
class Client:
    """Commands as a client service sends them, through a :class:`dockhand.client.Client` (``dh``):
    its connection, its one reply queue and its routing of replies by correlation id. On top, the
    fault-injection a test needs: commands published exactly as given (malformed bodies, custom
    headers), every reply of a correlation id (to count copies), the dead-letter queue and a tap
    on the results exchange (on a channel of the same connection)."""

    dh: DockhandClient
    channel: aio_pika.abc.AbstractChannel
    worker: WorkerProcess
    session_id: str
    replies: dict[str, asyncio.Queue[bytes]] = field(default_factory=dict)
    """Raw reply bodies per correlation id (``dh.expect``), for ``.empty()`` / ``.qsize()`` checks."""
    results: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def reply_to(self) -> str:
        """The reply queue of ``dh``, for messages a test publishes on another connection."""
        assert self.dh.reply_to is not None
        return self.dh.reply_to

    def _reply_box(self, correlation_id: str) -> asyncio.Queue[bytes]:
        box = self.replies.get(correlation_id)
        if box is None:
            box = self.replies[correlation_id] = self.dh.expect(correlation_id)
        return box

    async def _on_result(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            self.results.append((message.routing_key or "", json.loads(message.body)))

    def labels(self, **extra: str) -> dict[str, str]:
        return {TEST_LABEL: self.session_id, **extra}

    def ws_id(self, name: str = "ws") -> str:
        return f"t{self.session_id}-{name}-{secrets.token_hex(2)}"

    async def publish(
        self,
        body: bytes | dict[str, Any],
        routing_key: str,
        *,
        correlation_id: str | None = None,
        reply: bool = True,
        message_id: str | None = None,
        headers: dict[str, Any] | None = None,
        user_id: str | None = None,
        mandatory: bool = False,
    ) -> str:
        """Publish ``body`` exactly as given (``dh.publish_raw``: not validated, sent once); its
        replies are collected under the returned correlation id (see :meth:`reply`)."""
        correlation_id = correlation_id or uuid.uuid4().hex
        self._reply_box(correlation_id)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.dh.publish_raw(
            raw,
            routing_key,
            correlation_id=correlation_id,
            reply=reply,
            message_id=message_id,
            headers=headers,
            user_id=user_id,
            mandatory=mandatory,
        )

    def command(
        self, command_type: str, payload: dict[str, Any] | None = None, *, command_id: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"command_id": command_id or uuid.uuid4().hex, "type": command_type, **extra}
        if payload is not None:
            body["payload"] = payload
        return body

    async def send(
        self,
        command_type: str,
        payload: dict[str, Any] | None = None,
        *,
        target: str | None = None,
        timeout: float = 60,
        **extra: Any,
    ) -> dict[str, Any]:
        """Publish one command once and return its (first) reply. Sent as given, not validated by
        the client: many tests send invalid commands on purpose to see the worker reject them.
        Mandatory, as the client publishes: a target without a queue fails at once (``NoRoute``)."""
        body = self.command(command_type, payload, **extra)
        correlation_id = await self.publish(body, f"{target or self.worker.host_id}.{command_type}", mandatory=True)
        try:
            return await self.reply(correlation_id, timeout)
        finally:
            self.replies.pop(correlation_id, None)
            self.dh.forget(correlation_id)

    async def reply(self, correlation_id: str, timeout: float = 60) -> dict[str, Any]:
        try:
            raw = await asyncio.wait_for(self._reply_box(correlation_id).get(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no reply for {correlation_id} within {timeout} s; worker log:\n{self.worker.log()[-3000:]}"
            ) from None
        reply: dict[str, Any] = json.loads(raw)
        return reply

    async def no_reply(self, correlation_id: str, wait: float = 1.0) -> None:
        with contextlib.suppress(TimeoutError):
            extra = await asyncio.wait_for(self._reply_box(correlation_id).get(), wait)
            raise AssertionError(f"unexpected extra reply: {extra!r}")

    async def dead_letter(self, message_id: str, timeout: float = 15) -> aio_pika.abc.AbstractIncomingMessage:
        """The message with ``message_id`` from the dead-letter queue (others are skipped)."""
        queue = await self.channel.get_queue(f"{self.worker.prefix}.commands.dead", ensure=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await queue.get(fail=False, no_ack=False)
            if message is None:
                await asyncio.sleep(0.1)
                continue
            await message.ack()
            if message.message_id == message_id:
                return message
        raise AssertionError(f"message {message_id} did not reach the dead-letter queue within {timeout} s")

    async def results_for(
        self, command_id: str, count: int = 1, timeout: float = 10
    ) -> list[tuple[str, dict[str, Any]]]:
        """Messages seen on the results exchange for ``command_id`` (waits for ``count``)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [(key, body) for key, body in self.results if body.get("command_id") == command_id]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)


@pytest.fixture
async def client(worker: WorkerProcess, session_id: str) -> AsyncIterator[Client]:
    async with connect_client(worker, session_id) as client:
        yield client


@contextlib.asynccontextmanager
async def connect_client(worker: WorkerProcess, session_id: str, amqp_url: str = AMQP_URL) -> AsyncIterator[Client]:
    """A :class:`Client` for ``worker`` (the ``client`` fixture, for tests with their own workers)."""
    async with DockhandClient(
        amqp_url, prefix=worker.prefix, host=worker.host_id, retry=Retry.off(), name=f"dhtest-{session_id}"
    ) as dh:
        channel = await dh.channel()
        results_queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await results_queue.bind(f"{worker.prefix}.results", routing_key="#")
        client = Client(dh, channel, worker, session_id)
        await results_queue.consume(client._on_result)
        yield client


@pytest.fixture
async def docker() -> AsyncIterator[aiodocker.Docker]:
    client = aiodocker.Docker()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def test_image() -> str:
    return TEST_IMAGE


@dataclass
class EventLog:
    """Everything published on a worker's events and health exchanges, as it arrives."""

    items: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)

    def record(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.items.append((message.routing_key or "", json.loads(message.body), time.monotonic()))

    def select(self, kind: str, predicate: Any = None) -> list[dict[str, Any]]:
        """Bodies whose routing key ends with ``kind`` (e.g. ``discovery.added``) and match."""
        return [body for key, body, _ in self.items if key.endswith(kind) and (predicate is None or predicate(body))]

    async def wait_for(
        self, kind: str, predicate: Any = None, count: int = 1, timeout: float = 20
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.select(kind, predicate)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)}/{count} {kind} event(s) within {timeout} s; seen: {self.kinds()}")
            await asyncio.sleep(0.05)

    def kinds(self) -> list[str]:
        return [key for key, _, _ in self.items][-40:]


async def request(
    url: str,
    prefix: str,
    host: str,
    command: dict[str, Any],
    message_id: str | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 60,
) -> Any:
    """Send ``command`` (a whole body, sent as given: it may be invalid on purpose) to ``host``
    through a :class:`dockhand.client.Client` of its own on ``url`` (any broker user, e.g. one that
    may only declare server-named queues; TLS with ``ssl_context``) and return the reply."""
    async with DockhandClient(url, prefix=prefix, ssl_context=ssl_context, retry=Retry.off()) as dh:
        assert dh.reply_to is not None
        assert dh.reply_to.startswith("amq.gen-")  # server-named: all a least-privilege sender may declare
        correlation_id = await dh.publish_raw(
            json.dumps(command).encode(), f"{host}.{command['type']}", message_id=message_id
        )
        try:
            raw = await asyncio.wait_for(dh.expect(correlation_id).get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no reply to {command['type']} from {host} within {timeout} s") from None
        return json.loads(raw)


@contextlib.asynccontextmanager
async def listen(prefix: str) -> AsyncIterator[EventLog]:
    """Everything on ``<prefix>.events`` and ``<prefix>.health``, through ``Client.subscribe`` (a
    private queue; the exchanges are declared as the worker does, so a listener can start before
    the worker). Yields once the queue is bound."""
    log = EventLog()
    bound = asyncio.Event()

    async def on_connect() -> None:
        bound.set()

    async with DockhandClient(AMQP_URL, prefix=prefix, name="dhtest-listen") as dh:

        async def follow() -> None:
            async for message in dh.subscribe([("events", "#"), ("health", "#")], on_connect=on_connect):
                log.record(message)

        task = asyncio.create_task(follow())
        try:
            ready = asyncio.ensure_future(bound.wait())
            await asyncio.wait((ready, task), timeout=30, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if task.done():
                task.result()  # the subscription failed: its error
            assert bound.is_set(), f"the event subscription on {prefix} was not bound within 30 s"
            yield log
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def events(worker: WorkerProcess) -> AsyncIterator[EventLog]:
    async with listen(worker.prefix) as log:
        yield log


def service_of(container_id: str) -> Any:
    """Predicate: a discovery event about this container."""
    return lambda body: (body.get("service") or body.get("container") or {}).get("container_id") == container_id
