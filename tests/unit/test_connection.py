"""Several broker nodes (worker/connection.py) and the consumer watchdog (worker/watchdog.py).

Without a broker: closed ports refuse, a silent local server never answers the AMQP handshake.
The real-broker and real-cluster behaviour is in tests/integration/test_connection_nodes.py and
tests/cluster/.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import socket
import subprocess
import sys
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest
from faststream.rabbit import RabbitBroker
from faststream.rabbit.subscriber.usecase import RabbitSubscriber

from dockhand.amqp import UrlError
from dockhand.worker.connection import (
    MultiNodeBroker,
    MultiNodeConnection,
    NodeCycle,
    NodesUnreachable,
    connect_any,
    node_label,
)
from dockhand.worker.watchdog import ConsumerWatchdog, subscription_state


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connecting is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A server that accepts and then says nothing: an AMQP handshake there never completes."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


# --- NodeCycle ----------------------------------------------------------------------------------


def test_node_cycle_shuffles_once_and_then_goes_round() -> None:
    urls = [f"amqp://u:p@h{i}:{5700 + i}/" for i in range(1, 6)]
    orders = {NodeCycle(",".join(urls), random.Random(seed)).urls for seed in range(20)}
    assert len(orders) > 1, "the start must differ between workers (a fleet spreads over the nodes)"
    cycle = NodeCycle(urls, random.Random(1))
    assert sorted(cycle.urls) == sorted(urls)
    seen = []
    for _ in range(5):
        seen.append(cycle.current)
        cycle.failed(ConnectionRefusedError(111, "refused"))
    assert seen == list(cycle.urls)  # each node once per round, in the shuffled order
    assert cycle.current == seen[0]


def test_node_cycle_says_when_a_whole_round_failed_and_why() -> None:
    cycle = NodeCycle("amqp://u:p@a:5701,b:5702/vh", random.Random(0))
    first = cycle.label
    assert cycle.failed(ConnectionRefusedError(111, "Connection refused")) is False
    assert cycle.failed(TimeoutError()) is True
    assert cycle.reasons[first] == "Connection refused"
    assert "no answer in time" in cycle.reasons.values()
    cycle.succeeded()
    assert cycle.failures == 0
    assert cycle.reasons == {}
    assert cycle.failed(None) is False


def test_node_cycle_refuses_a_malformed_list() -> None:
    with pytest.raises(UrlError, match="empty entry"):
        NodeCycle("amqp://a:5701/,,amqp://b:5702/")
    with pytest.raises(UrlError, match="amqp:// or amqps://"):
        NodeCycle("http://a/")


def test_node_label_names_host_and_port_never_credentials() -> None:
    assert node_label("amqp://user:secret@rabbit-1:5701/vh") == "rabbit-1:5701"
    assert node_label("amqps://user:secret@rabbit-1/") == "rabbit-1:5671"
    assert node_label("amqp://rabbit-1/") == "rabbit-1:5672"


# --- start-up: one round, then one clear error ----------------------------------------------------


async def test_broker_start_with_no_node_answering_names_every_node() -> None:
    ports = [closed_port(), closed_port()]
    broker = MultiNodeBroker(",".join(f"amqp://guest:guest@127.0.0.1:{p}/" for p in ports))
    began = time.monotonic()
    with pytest.raises(NodesUnreachable) as caught:
        await broker.connect()
    assert time.monotonic() - began < 3, "one failed round must end the start-up, not a retry loop"
    assert set(caught.value.reasons) == {f"127.0.0.1:{p}" for p in ports}
    assert all(r == "Connection refused" for r in caught.value.reasons.values())
    assert "guest" not in str(caught.value)
    await broker.stop()


async def test_an_attempt_on_a_node_that_does_not_answer_is_bounded(silent_port: int) -> None:
    refused = closed_port()
    broker = MultiNodeBroker(
        f"amqp://guest:guest@127.0.0.1:{silent_port}/,amqp://guest:guest@127.0.0.1:{refused}/",
        attempt_timeout_s=0.5,
    )
    began = time.monotonic()
    with pytest.raises(NodesUnreachable) as caught:
        await broker.connect()
    assert time.monotonic() - began < 3
    assert caught.value.reasons[f"127.0.0.1:{silent_port}"] == "no answer in time"
    await broker.stop()


async def test_connect_any_moves_past_dead_nodes(silent_port: int) -> None:
    cycle = NodeCycle([f"amqp://guest:guest@127.0.0.1:{closed_port()}/", f"amqp://127.0.0.1:{silent_port}/"])
    with pytest.raises(NodesUnreachable) as caught:
        await connect_any(cycle, attempt_timeout_s=0.3)
    assert len(caught.value.reasons) == 2
    assert cycle.failures == 0  # the next call starts a fresh round


def test_multi_node_broker_plugs_its_connection_class_into_faststream() -> None:
    # FastStream 0.7 connects with aio_pika.connect_robust(**broker._connection_kwargs);
    # connect_robust takes connection_class. If either changes, MultiNodeBroker must follow.
    assert "connection_class" in inspect.signature(aio_pika.connect_robust).parameters
    assert "connect_robust(**self._connection_kwargs)" in inspect.getsource(RabbitBroker._connect)
    broker = MultiNodeBroker("amqp://a:5701/,amqp://b:5702/,amqp://c:5703/", rng=random.Random(3))
    factory = broker._connection_kwargs["connection_class"]
    assert factory.func is MultiNodeConnection
    assert factory.keywords["nodes"] is broker.nodes
    assert broker.node is None
    # FastStream builds its URL from the first node of the shuffled list (the AsyncAPI server).
    assert node_label(broker._connection_kwargs["url"]) == broker.nodes.label


# --- watchdog -------------------------------------------------------------------------------------


def test_faststream_and_aio_pika_keep_what_the_watchdog_inspects() -> None:
    # subscription_state reads these two attributes of FastStream's RabbitSubscriber ...
    slots = {s for cls in RabbitSubscriber.__mro__ for s in getattr(cls, "__slots__", ())}
    assert {"_queue_obj", "_consumer_tag"} <= slots
    # ... and aio-pika's channel._channel.channel.consumers (aiormq drops a tag the broker cancels).
    assert "self._channel: Optional[UnderlayChannel] = None" in inspect.getsource(aio_pika.Channel.__init__)
    assert "return self._channel.channel" in inspect.getsource(aio_pika.Channel.get_underlay_channel)
    assert "self.consumers.pop(frame.consumer_tag, None)" in inspect.getsource(aiormq.Channel)


class FakeChannel:
    """An aio-pika channel: ``_channel.channel`` is aiormq's, which holds the consumer tags."""

    def __init__(self) -> None:
        self.is_closed = False
        self.consumers: dict[str, Any] = {}
        self.reopened = 0
        self._channel = types.SimpleNamespace(channel=self)

    async def reopen(self) -> None:
        self.reopened += 1
        self.is_closed = False


class FakeQueueObj:
    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel


class FakeQueue:
    name = "dockhand.commands.h1"


class FakeSubscriber:
    """Like a RabbitSubscriber: start() consumes on the channel under a new tag."""

    def __init__(self) -> None:
        self.queue = FakeQueue()
        self.channel_obj = FakeChannel()
        self._queue_obj: FakeQueueObj | None = None
        self._consumer_tag: str | None = None
        self.starts = 0
        self.stops = 0

    async def start(self) -> None:
        self.starts += 1
        self._queue_obj = FakeQueueObj(self.channel_obj)
        self._consumer_tag = f"ctag-{self.starts}"
        self.channel_obj.consumers[self._consumer_tag] = object()

    async def stop(self) -> None:
        self.stops += 1
        if self._consumer_tag is not None:
            self.channel_obj.consumers.pop(self._consumer_tag, None)
        self._queue_obj = None
        self._consumer_tag = None


async def test_subscription_state_tells_why_a_subscriber_does_not_consume() -> None:
    sub = FakeSubscriber()
    assert subscription_state(sub).reason == "not started"
    await sub.start()
    assert subscription_state(sub).consuming
    sub.channel_obj.consumers.clear()  # what aiormq does on the broker's basic.cancel
    assert subscription_state(sub).reason == "consumer cancelled by the broker"
    sub.channel_obj.is_closed = True
    assert subscription_state(sub).reason == "channel closed"


async def test_watchdog_recreates_a_cancelled_consumer_on_the_second_look() -> None:
    sub = FakeSubscriber()
    await sub.start()
    active = True
    watchdog = ConsumerWatchdog(lambda: [sub], lambda: active, lambda: True)
    assert watchdog.consuming
    assert await watchdog.check() == 0
    sub.channel_obj.consumers.clear()
    assert not watchdog.consuming
    assert watchdog.problems() == ["dockhand.commands.h1: consumer cancelled by the broker"]
    assert await watchdog.check() == 0, "the first look may be a restore in progress"
    assert await watchdog.check() == 1
    assert (sub.stops, sub.starts) == (1, 2)
    assert watchdog.consuming
    assert watchdog.recreated == 1
    # A standby's subscribers are meant to be stopped: nothing to re-create, nothing to report.
    active = False
    await sub.stop()
    assert await watchdog.check() == 0
    assert await watchdog.check() == 0
    assert watchdog.problems() == []
    assert not watchdog.consuming


async def test_watchdog_leaves_a_reconnect_to_aio_pika_and_reopens_a_closed_channel() -> None:
    sub = FakeSubscriber()
    await sub.start()
    connected = False
    watchdog = ConsumerWatchdog(lambda: [sub], lambda: True, lambda: connected)
    sub.channel_obj.is_closed = True
    for _ in range(3):
        assert await watchdog.check() == 0  # the connection is down: aio-pika restores on reconnect
    connected = True
    assert await watchdog.check() == 0
    assert await watchdog.check() == 1
    assert sub.channel_obj.reopened == 1
    assert sub.starts == 1, "reopening the channel restored the consumer: no new subscriber start needed"


async def test_watchdog_task_runs_the_checks() -> None:
    sub = FakeSubscriber()
    await sub.start()
    watchdog = ConsumerWatchdog(lambda: [sub], lambda: True, lambda: True, interval_s=0.01)
    watchdog.start()
    sub.channel_obj.consumers.clear()
    async with asyncio.timeout(5):
        while not watchdog.recreated:
            await asyncio.sleep(0.01)
    await watchdog.stop()
    assert watchdog.consuming


# --- the worker's start-up: one line, never a traceback --------------------------------------------


def _run_worker(url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DOCKHAND_AMQP_URL": url,
        "DOCKHAND_HOST_ID": "unit-nodes",
        "DOCKHAND_HTTP_PORT": "0",
        "DOCKHAND_STATE_DIR": str(tmp_path),
    }
    return subprocess.run(
        [sys.executable, "-m", "dockhand.worker"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("amqp://guest:s3cret@127.0.0.1:5701/,,amqp://guest:s3cret@127.0.0.1:5702/", "empty entry"),
        ("amqp://guest:s3cret@127.0.0.1:5701/,amqps://guest:s3cret@127.0.0.1:5702/", "one scheme"),
        ("amqp://guest:s3cret@h1:5701,h2:x/", "Port could not be cast"),
        ("amqp://guest:s3cret@h1:5701/,h2:5702/,ftp://h3/", "must be amqp:// or amqps://"),
    ],
)
def test_a_malformed_node_list_is_one_line(url: str, message: str, tmp_path: Path) -> None:
    done = _run_worker(url, tmp_path)
    assert done.returncode == 2, done.stderr  # EXIT_INVALID, as for every invalid setting
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("dockhand: invalid settings: DOCKHAND_AMQP_URL: ")
    assert message in done.stderr
    assert "s3cret" not in done.stderr


def test_no_node_answering_is_one_line_naming_each(tmp_path: Path) -> None:
    ports = [closed_port(), closed_port(), closed_port()]
    url = ",".join(f"amqp://guest:s3cret@127.0.0.1:{p}/" for p in ports)
    done = _run_worker(url, tmp_path)
    assert done.returncode == 69, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("dockhand: cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:")
    for port in ports:
        assert f"127.0.0.1:{port}: Connection refused" in last
    assert "Traceback" not in done.stderr
    assert "s3cret" not in done.stderr
