"""worker.events without Docker: the EventStream's handling, ordering, ids and its bounded queue."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import stamina

from dockhand.schemas import ContainerEvent, DiscoveryEvent, NetworkEvent, WireModel
from dockhand.worker.discovery import Discovery
from dockhand.worker.docker import DockerOps
from dockhand.worker.events import EventStream, Reconcile, _since
from dockhand.worker.labels import Labels
from dockhand.worker.policy import Policy
from dockhand.worker.settings import Settings
from tests.fakes import Box, FakeDockerClient, Recorder

HOST = "host-a"
NAMES = Labels("dockhand", "dockhand")
T0 = 1_714_557_600_123_456_789  # 2024-05-01T10:00:00.123456789Z

WS_ID = "c1" + "0" * 62
WEB_ID = "c2" + "0" * 62
PLAIN_ID = "c3" + "0" * 62
NET_ID = "7e" * 32

MANAGED = {
    "dockhand.managed": "true",
    "dockhand.host": HOST,
    "dockhand.workspace.id": "ws1",
    "dockhand.workspace.name": "Workspace one",
    "dockhand.spec-hash": "0123456789abcdef0123456789abcdef",
}
DISCOVERABLE = {
    "dockhand.enabled": "true",
    "dockhand.domain": "app.example.com",
    "dockhand.port": "8080",
}


@pytest.fixture(autouse=True)
def stamina_testing() -> Iterator[None]:
    with stamina.set_testing(True):
        yield


# --- fakes ------------------------------------------------------------------------------------


def events_docker() -> FakeDockerClient:
    """Docker with the web service and a workspace running, both started after the last list
    (inspectable, not listed), so every event about them is news to discovery."""
    docker = FakeDockerClient()
    for container_id, name, labels in ((WEB_ID, "web", DISCOVERABLE), (WS_ID, "dockhand-ws1", MANAGED)):
        box = Box(id=container_id, name=name, labels=labels, ports=[(8080, "tcp", [("127.0.0.1", 32768)])])
        docker.put(box, listed=False)
    return docker


def make_stream(**settings: Any) -> tuple[EventStream, Recorder, FakeDockerClient]:
    config = Settings(host_id=HOST, worker_id=f"{HOST}-test", docker_host=None, **settings)
    docker = events_docker()
    ops = DockerOps(docker, config, NAMES, Policy(config, NAMES))  # type: ignore[arg-type]
    rec = Recorder()  # one publish for both: the order across exchanges is observable
    return EventStream(ops, config, Discovery(ops, rec), rec), rec, docker


def container_event(
    action: str, container_id: str, name: str, labels: dict[str, str], *, t: int = T0, **extra: str
) -> dict[str, Any]:
    """A Docker /events line (API 1.41) for a container."""
    attributes = {**labels, "image": "nginx:1.25", "name": name, **extra}
    return {
        "status": action,
        "id": container_id,
        "from": "nginx:1.25",
        "Type": "container",
        "Action": action,
        "Actor": {"ID": container_id, "Attributes": attributes},
        "scope": "local",
        "time": t // 1_000_000_000,
        "timeNano": t,
    }


def network_event(action: str, container_id: str, *, network: str = "app", t: int = T0) -> dict[str, Any]:
    return {
        "Type": "network",
        "Action": action,
        "Actor": {"ID": NET_ID, "Attributes": {"container": container_id, "name": network, "type": "bridge"}},
        "scope": "local",
        "time": t // 1_000_000_000,
        "timeNano": t,
    }


def received(t: int = T0) -> float:
    return t / 1e9 + 0.002


# --- _handle ----------------------------------------------------------------------------------


async def test_start_is_published_with_container_ref() -> None:
    stream, rec, _ = make_stream()
    await stream._handle(container_event("start", PLAIN_ID, "db", {"com.example.tier": "db"}), received())
    assert rec.keys == [f"{HOST}.container.start"]
    event = rec.last()
    assert isinstance(event, ContainerEvent)
    assert event.type == "container.start"
    assert event.host_id == HOST
    assert event.time == datetime(2024, 5, 1, 10, 0, 0, 123457, tzinfo=UTC)
    assert event.container.id == PLAIN_ID
    assert event.container.name == "db"
    assert event.container.image == "nginx:1.25"
    assert event.container.labels == {"com.example.tier": "db"}  # name and image are not labels
    assert event.container.workspace_id is None
    assert event.attributes == {}
    assert stream.state.published == 1
    assert stream.state.last_event_at == event.time
    assert stream.state.lag_ms == pytest.approx(2.0, abs=0.5)


@pytest.mark.parametrize(
    ("action", "suffix"), [("health_status: healthy", "healthy"), ("health_status: unhealthy", "unhealthy")]
)
async def test_health_status_is_published_as_health_dot(action: str, suffix: str) -> None:
    stream, rec, _ = make_stream()
    await stream._handle(container_event(action, PLAIN_ID, "db", {}), received())
    assert rec.keys == [f"{HOST}.container.health.{suffix}"]
    assert rec.last().type == f"container.health.{suffix}"


@pytest.mark.parametrize(
    "action",
    ["exec_create: sh -c true", "exec_start: sh -c true", "exec_die", "attach", "resize", "top", "rename", "commit"],
)
async def test_unpublished_actions(action: str) -> None:
    stream, rec, _ = make_stream()
    await stream._handle(container_event(action, PLAIN_ID, "db", {}, execID="e" * 64, exitCode="0"), received())
    assert rec.messages == []
    assert stream.state.published == 0


@pytest.mark.parametrize(
    "action", ["create", "start", "stop", "die", "kill", "oom", "restart", "pause", "unpause", "destroy"]
)
async def test_contract_container_actions_are_published(action: str) -> None:
    stream, rec, _ = make_stream()
    await stream._handle(container_event(action, PLAIN_ID, "db", {}), received())
    assert rec.keys == [f"{HOST}.container.{action}"]


async def test_die_carries_exit_code_as_int_and_kill_the_signal() -> None:
    stream, rec, _ = make_stream()
    await stream._handle(container_event("kill", PLAIN_ID, "db", {}, signal="9"), received())
    await stream._handle(container_event("die", PLAIN_ID, "db", {}, exitCode="137", execDuration="12"), received())
    kill, die = (m for _, m in rec.messages)
    assert kill.attributes == {"signal": "9"}
    assert die.attributes == {"exit_code": 137}
    assert isinstance(die.attributes["exit_code"], int)
    assert "exitCode" not in die.container.labels
    assert "execDuration" not in die.container.labels


async def test_managed_container_carries_workspace_id_also_on_network_events() -> None:
    stream, rec, _ = make_stream()
    await stream._handle(container_event("create", WS_ID, "dockhand-ws1", MANAGED), received())
    await stream._handle(network_event("connect", WS_ID, t=T0 + 1), received(T0 + 1))
    await stream._handle(network_event("connect", PLAIN_ID, t=T0 + 2), received(T0 + 2))
    assert rec.keys == [f"{HOST}.container.create", f"{HOST}.network.connect", f"{HOST}.network.connect"]
    created, connected, other = (m for _, m in rec.messages)
    assert created.container.workspace_id == "ws1"
    assert isinstance(connected, NetworkEvent)
    assert connected.type == "network.connect"
    assert (connected.network.id, connected.network.name, connected.network.type) == (NET_ID, "app", "bridge")
    assert connected.container_id == WS_ID
    assert connected.workspace_id == "ws1"
    assert other.workspace_id is None


async def test_workspace_id_forgotten_after_destroy() -> None:
    stream, rec, _ = make_stream()
    await stream._handle(container_event("start", WS_ID, "dockhand-ws1", MANAGED), received())
    await stream._handle(container_event("destroy", WS_ID, "dockhand-ws1", MANAGED, t=T0 + 1), received())
    await stream._handle(network_event("disconnect", WS_ID, t=T0 + 2), received())
    assert rec.messages[1][1].container.workspace_id == "ws1"  # the destroy itself still says so
    assert rec.last().workspace_id is None


async def test_container_managed_by_another_host_has_no_workspace_id() -> None:
    stream, rec, _ = make_stream()
    labels = {**MANAGED, "dockhand.host": "host-b"}
    await stream._handle(container_event("start", WS_ID, "dockhand-ws1", labels), received())
    await stream._handle(network_event("connect", WS_ID, t=T0 + 1), received())
    assert rec.messages[0][1].container.workspace_id is None
    assert rec.last().workspace_id is None


async def test_network_create_and_destroy_published_other_actions_not() -> None:
    stream, rec, _ = make_stream()
    create = network_event("create", "", t=T0)
    create["Actor"]["Attributes"] = {"name": "app", "type": "bridge"}
    await stream._handle(create, received())
    await stream._handle({**network_event("prune", ""), "Actor": {"ID": "", "Attributes": {}}}, received())
    await stream._handle({**create, "Action": "destroy", "timeNano": T0 + 5}, received())
    assert rec.keys == [f"{HOST}.network.create", f"{HOST}.network.destroy"]
    assert rec.messages[0][1].container_id is None


async def test_event_id_is_deterministic_per_docker_event() -> None:
    first, rec1, _ = make_stream()
    second, rec2, _ = make_stream()  # another worker replica seeing the same daemon
    event = container_event("die", PLAIN_ID, "db", {}, exitCode="1")
    net = network_event("connect", PLAIN_ID)
    for stream in (first, second):
        await stream._handle(event, received())
        await stream._handle(net, received())
    await first._handle(event, received() + 5)  # a later delivery of the same event
    ids1 = [m.event_id for _, m in rec1.messages]
    ids2 = [m.event_id for _, m in rec2.messages]
    assert ids1[:2] == ids2
    assert ids1[2] == ids1[0]
    assert uuid.UUID(ids1[0]).version == 5
    assert ids1[0] != ids1[1]

    variants = [
        container_event("die", PLAIN_ID, "db", {}, exitCode="1", t=T0 + 1),  # other time
        container_event("stop", PLAIN_ID, "db", {}, t=T0),  # other action
        container_event("die", WEB_ID.replace("c2", "c9"), "db", {}, exitCode="1"),  # other container
    ]
    others = []
    for variant in variants:
        await first._handle(variant, received())
        others.append(rec1.last().event_id)
    assert len({ids1[0], *others}) == 4


async def test_container_event_is_published_before_the_discovery_event_it_causes() -> None:
    stream, rec, _ = make_stream()
    await stream._handle(container_event("start", WEB_ID, "web", DISCOVERABLE), received())
    await stream._handle(container_event("die", WEB_ID, "web", DISCOVERABLE, t=T0 + 1, exitCode="0"), received())
    assert rec.keys == [
        f"{HOST}.container.start",
        f"{HOST}.discovery.added",
        f"{HOST}.container.die",
        f"{HOST}.discovery.removed",
    ]
    assert isinstance(rec.messages[1][1], DiscoveryEvent)
    assert stream.state.published == 2  # discovery messages are not stream events


async def test_events_of_non_discovery_containers_cause_no_inspect() -> None:
    stream, _rec, docker = make_stream()
    await stream._handle(container_event("start", WS_ID, "dockhand-ws1", MANAGED), received())
    await stream._handle(network_event("connect", WS_ID), received())
    assert docker.show_calls == []


# --- _enqueue ---------------------------------------------------------------------------------


def test_enqueue_drops_when_full_then_marks_a_resync() -> None:
    stream, _, _ = make_stream(event_queue_size=10)
    items = [(container_event("start", PLAIN_ID, "db", {}, t=T0 + i), 0.0) for i in range(14)]
    for item in items[:10]:
        stream._enqueue(item)
    assert stream.queue.full()
    stream._enqueue(items[10])
    stream._enqueue(items[11])
    assert stream.state.dropped == 2
    # the consumer catches up by two
    assert stream.queue.get_nowait() == items[0]
    assert stream.queue.get_nowait() == items[1]
    stream._enqueue(items[12])
    assert stream.state.dropped == 2
    queued = [stream.queue.get_nowait() for _ in range(stream.queue.qsize())]
    assert queued == [*items[2:10], Reconcile("resync"), items[12]]
    # the overflow is over: no further marker
    stream._enqueue(items[13])
    assert stream.queue.get_nowait() == items[13]
    assert stream.queue.empty()


def test_enqueue_with_one_free_slot_queues_the_marker_not_the_event() -> None:
    stream, _, _ = make_stream(event_queue_size=10)
    items = [(container_event("start", PLAIN_ID, "db", {}, t=T0 + i), 0.0) for i in range(13)]
    for item in items[:11]:
        stream._enqueue(item)
    assert stream.state.dropped == 1
    stream.queue.get_nowait()
    stream._enqueue(items[11])  # room for the marker only: the event is dropped after it
    assert stream.state.dropped == 2
    queued = [stream.queue.get_nowait() for _ in range(stream.queue.qsize())]
    assert queued == [*items[1:10], Reconcile("resync")]
    # that drop calls for another resync before the next event
    stream._enqueue(items[12])
    assert [stream.queue.get_nowait() for _ in range(stream.queue.qsize())] == [Reconcile("resync"), items[12]]


# --- _since -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("time_nano", "since"),
    [
        (1_700_000_000_123_456_789, "1700000000.123456789"),
        (1_700_000_000_000_000_001, "1700000000.000000001"),
        (1_700_000_000_000_000_000, "1700000000.000000000"),
        (1_700_000_000_100_000_000, "1700000000.100000000"),
        (999, "0.000000999"),
    ],
)
def test_since_formats_seconds_and_padded_nanos(time_nano: int, since: str) -> None:
    assert _since(time_nano) == since


async def test_process_forever_reconciles_on_marker_and_handles_events_in_order() -> None:
    stream, rec, _ = make_stream()
    done = asyncio.Event()
    publish = rec.__call__

    async def counting(routing_key: str, model: WireModel) -> None:
        await publish(routing_key, model)
        if len(rec.messages) == 3:
            done.set()

    stream._publish = stream.discovery._publish = counting
    stream._enqueue(Reconcile("startup"))
    stream._enqueue((container_event("start", WEB_ID, "web", DISCOVERABLE), received()))
    task = asyncio.get_running_loop().create_task(stream._process_forever())
    try:
        async with asyncio.timeout(2):
            await done.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert rec.keys == [f"{HOST}.discovery.snapshot", f"{HOST}.container.start", f"{HOST}.discovery.added"]
    assert stream.ready.is_set()


async def test_a_failed_reconcile_is_retried_not_dropped() -> None:
    """Docker unreachable when the reconcile runs (say the stream came back before the health
    probe did): the reconcile is retried until it succeeds, and its snapshot is published."""
    stream, rec, docker = make_stream(event_reconnect_max_s=0.05)
    stream.ops.available = False  # fail-fast on, as after a daemon outage
    docker.fail = ConnectionRefusedError(111, "Connection refused")  # and still down
    stream._enqueue(Reconcile("resync"))
    task = asyncio.get_running_loop().create_task(stream._process_forever())
    try:
        await asyncio.sleep(0.3)
        assert rec.keys == []  # still failing: nothing published, nothing lost
        docker.fail = None
        stream.ops.available = True
        async with asyncio.timeout(2):
            while not rec.keys:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert rec.keys == [f"{HOST}.discovery.snapshot"]
    assert rec.last().reason == "resync"


# --- events older than the last reconcile (issue 18) ------------------------------------------


async def test_events_older_than_the_last_list_are_published_marked_replayed() -> None:
    stream, rec, _ = make_stream()
    await stream.discovery.reconcile("resync")
    listed = stream.discovery.listed_at_ns
    assert listed is not None
    rec.messages.clear()
    old, new = listed - 5_000_000, listed + 5_000_000
    await stream._handle(container_event("die", PLAIN_ID, "db", {}, t=old, exitCode="0"), received(old))
    await stream._handle(network_event("connect", PLAIN_ID, t=old + 1), received(old))
    await stream._handle(container_event("start", PLAIN_ID, "db", {}, t=new), received(new))
    await stream._handle(network_event("disconnect", PLAIN_ID, t=new + 1), received(new))
    died, connected, started, disconnected = (m for _, m in rec.messages)
    assert died.attributes == {"exit_code": 0, "replayed": True}
    assert connected.attributes == {"replayed": True}
    assert started.attributes == {}
    assert disconnected.attributes == {}
    assert stream.state.published == 4  # forwarded all the same: they happened


async def test_a_replayed_die_of_a_running_service_is_forwarded_but_changes_no_discovery() -> None:
    stream, rec, docker = make_stream()
    docker.put(docker.boxes[WEB_ID])  # listed from now on
    await stream.discovery.reconcile("resync")  # lists it running
    assert rec.keys == [f"{HOST}.discovery.added", f"{HOST}.discovery.snapshot"]
    listed = stream.discovery.listed_at_ns
    assert listed is not None
    rec.messages.clear()
    die = container_event("die", WEB_ID, "web", DISCOVERABLE, t=listed - 10_000_000, exitCode="137")
    start = container_event("start", WEB_ID, "web", DISCOVERABLE, t=listed - 5_000_000)
    await stream._handle(die, received())
    await stream._handle(start, received())
    assert rec.keys == [f"{HOST}.container.die", f"{HOST}.container.start"]
    assert [s.container_id for s in stream.discovery.current()] == [WEB_ID]
    assert WEB_ID in docker.show_calls  # decided from its current state: running, as listed


async def test_reader_reconnects_at_once_when_docker_answers_again() -> None:
    # A long backoff (reconnect max 30 s): only Docker being seen answering again (a probe, a
    # command) makes the reader try again before it runs out.
    stream, _, _ = make_stream(event_reconnect_max_s=30)
    attempts: list[float] = []

    async def failing() -> None:
        attempts.append(asyncio.get_running_loop().time())
        raise ConnectionRefusedError(111, "Connection refused")

    stream._read_once = failing  # type: ignore[method-assign]
    stream.ops.mark_unavailable(float("inf"))
    assert stream.ops.available is False
    task = asyncio.get_running_loop().create_task(stream._read_forever())
    try:
        async with asyncio.timeout(5):
            while len(attempts) < 5:  # the next backoff is 0.8-1.6 s
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        count = len(attempts)
        stream.ops.mark_available()
        async with asyncio.timeout(0.5):
            while len(attempts) == count:
                await asyncio.sleep(0.005)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_stop_is_not_lost_when_the_reader_is_woken_at_the_same_moment() -> None:
    # asyncio.wait_for on 3.11 swallows a cancel that arrives when the awaited thing is done:
    # a wake (Docker available again) just before stop() must not keep the reader running.
    stream, _, _ = make_stream(event_reconnect_max_s=30)

    async def failing() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    stream._read_once = failing  # type: ignore[method-assign]
    stream.ops.mark_unavailable(float("inf"))
    stream.start()
    await asyncio.sleep(0.3)  # backing off
    stream.ops.mark_available()  # sets the wake...
    stream._enqueue(Reconcile("resync"))  # ...and an item for the processor, then at once:
    async with asyncio.timeout(2):
        await stream.stop()
    assert not stream.running  # both tasks ended
