"""Event sequence numbers (contract v1.1): ``seq`` per host and family, ``epoch`` per publisher."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import stamina
from faststream.rabbit import RabbitExchange

from dockhand.schemas import ContainerEvent, DiscoverySnapshot, Heartbeat, WireModel
from dockhand.schemas.events import ContainerRef
from dockhand.schemas.health import CommandCounters, DockerHealth, EventStreamHealth
from dockhand.worker.discovery import Discovery
from dockhand.worker.docker import DockerOps
from dockhand.worker.events import EventStream
from dockhand.worker.policy import Policy
from dockhand.worker.publishing import EventSequencer, Publisher
from dockhand.worker.settings import Settings
from tests.fakes import Recorder

from .test_events import (
    HOST,
    NAMES,
    PLAIN_ID,
    T0,
    WEB_ID,
    container_event,
    events_docker,
    network_event,
    received,
)

WHEN = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def stamina_testing() -> Iterator[None]:
    with stamina.set_testing(True):
        yield


def event(action: str = "start", container_id: str = PLAIN_ID) -> ContainerEvent:
    return ContainerEvent(
        event_id=f"{action}-{container_id[:4]}",
        host_id=HOST,
        type=f"container.{action}",
        time=WHEN,
        container=ContainerRef(id=container_id),
    )


def snapshot() -> DiscoverySnapshot:
    return DiscoverySnapshot(event_id="snap", host_id=HOST, time=WHEN, services=[], reason="periodic")


def numbered(rec: Recorder) -> list[tuple[str, Any, Any]]:
    return [(key, getattr(model, "seq", None), getattr(model, "epoch", None)) for key, model in rec.messages]


async def test_seq_counts_per_family_by_one_snapshots_included() -> None:
    sequencer, rec = EventSequencer(), Recorder()
    for key, model in [
        (f"{HOST}.container.create", event("create")),
        (f"{HOST}.discovery.snapshot", snapshot()),
        (f"{HOST}.container.start", event("start")),
        (f"{HOST}.network.connect", event()),
        (f"{HOST}.container.health.healthy", event("health.healthy")),
        (f"{HOST}.discovery.added", event()),
        (f"{HOST}.workspace.expired", event()),
        (f"{HOST}.discovery.invalid", event()),
        (f"{HOST}.discovery.snapshot", snapshot()),
    ]:
        await sequencer.publish(key, model, rec)
    epoch = sequencer.epoch
    assert numbered(rec) == [
        (f"{HOST}.container.create", 1, epoch),
        (f"{HOST}.discovery.snapshot", 1, epoch),
        (f"{HOST}.container.start", 2, epoch),
        (f"{HOST}.network.connect", 1, epoch),
        (f"{HOST}.container.health.healthy", 3, epoch),  # family = second word, whatever follows
        (f"{HOST}.discovery.added", 2, epoch),
        (f"{HOST}.workspace.expired", 1, epoch),
        (f"{HOST}.discovery.invalid", 3, epoch),
        (f"{HOST}.discovery.snapshot", 4, epoch),
    ]
    assert len(epoch) == 16
    int(epoch, 16)  # hex


async def test_caller_model_is_left_unnumbered() -> None:
    sequencer, rec = EventSequencer(), Recorder()
    model = event()
    await sequencer.publish(f"{HOST}.container.start", model, rec)
    assert (model.seq, model.epoch) == (None, None)
    sent = rec.last()
    assert sent is not model
    assert sent.model_dump(exclude={"seq", "epoch"}) == model.model_dump(exclude={"seq", "epoch"})


async def test_new_epoch_restarts_every_family_at_one() -> None:
    sequencer, rec = EventSequencer(), Recorder()
    first = sequencer.epoch
    await sequencer.publish(f"{HOST}.container.start", event(), rec)
    await sequencer.publish(f"{HOST}.container.die", event("die"), rec)
    await sequencer.publish(f"{HOST}.discovery.snapshot", snapshot(), rec)
    second = sequencer.new_epoch()
    assert second == sequencer.epoch != first
    await sequencer.publish(f"{HOST}.discovery.snapshot", snapshot(), rec)
    await sequencer.publish(f"{HOST}.container.start", event(), rec)
    assert [(seq, epoch) for _, seq, epoch in numbered(rec)] == [
        (1, first),
        (2, first),
        (1, first),
        (1, second),
        (1, second),
    ]


def test_every_publisher_gets_its_own_epoch() -> None:
    # A restarted worker or a standby builds a new sequencer: its epoch differs from the old one.
    epochs = {EventSequencer().epoch for _ in range(100)} | {EventSequencer().new_epoch() for _ in range(100)}
    assert len(epochs) == 200


async def test_concurrent_publishes_of_one_family_reach_the_broker_in_seq_order() -> None:
    sequencer = EventSequencer()
    arrived: list[tuple[str, int]] = []
    in_flight: dict[str, int] = {"container": 0, "discovery": 0}
    overlap: list[str] = []

    async def slow_broker(routing_key: str, model: WireModel) -> None:
        family = routing_key.split(".")[1]
        in_flight[family] += 1
        if in_flight[family] > 1:
            overlap.append(family)
        await asyncio.sleep(random.uniform(0, 0.003))  # varied confirm latency
        arrived.append((family, getattr(model, "seq", -1)))
        in_flight[family] -= 1

    keys = [f"{HOST}.container.start", f"{HOST}.discovery.added"] * 40
    random.shuffle(keys)
    await asyncio.gather(*(sequencer.publish(key, event(), slow_broker) for key in keys))
    assert overlap == []  # one publish per family at a time: the next waits for the confirm
    for family in ("container", "discovery"):
        assert [seq for f, seq in arrived if f == family] == list(range(1, 41))


async def test_a_failed_publish_leaves_a_gap_and_does_not_stop_the_family() -> None:
    sequencer, rec = EventSequencer(), Recorder()

    async def broker(routing_key: str, model: WireModel) -> None:
        if getattr(model, "seq", None) == 2:
            raise ConnectionError("broker gone for good")
        await rec(routing_key, model)

    for action in ("create", "start", "die"):
        with pytest.raises(ConnectionError) if action == "start" else contextlib.nullcontext():
            await sequencer.publish(f"{HOST}.container.{action}", event(action), broker)
    # seq 2 never reached the broker: a consumer sees 1, 3 and resyncs.
    assert [(key.rsplit(".", 1)[1], seq) for key, seq, _ in numbered(rec)] == [("create", 1), ("die", 3)]


async def test_a_cancelled_wait_for_the_lock_takes_no_number() -> None:
    sequencer, rec = EventSequencer(), Recorder()
    release = asyncio.Event()

    async def held(routing_key: str, model: WireModel) -> None:
        await release.wait()
        await rec(routing_key, model)

    first = asyncio.ensure_future(sequencer.publish(f"{HOST}.container.start", event(), held))
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(sequencer.publish(f"{HOST}.container.stop", event("stop"), held))
    await asyncio.sleep(0)
    waiting.cancel()
    release.set()
    await first
    await asyncio.gather(waiting, return_exceptions=True)
    await sequencer.publish(f"{HOST}.container.die", event("die"), rec)
    assert [seq for _, seq, _ in numbered(rec)] == [1, 2]


class FakeBroker:
    def __init__(self) -> None:
        self.published: list[tuple[bytes, dict[str, Any]]] = []

    async def publish(self, payload: bytes, **options: Any) -> None:
        self.published.append((payload, options))


async def test_publisher_puts_seq_and_epoch_on_the_wire_only_for_sequenced_exchanges() -> None:
    broker = FakeBroker()
    publisher = Publisher(broker)  # type: ignore[arg-type]
    sequencer = EventSequencer()
    events = publisher.to(RabbitExchange("p.events"), message_type="dockhand.event", sequencer=sequencer)
    health = publisher.to(RabbitExchange("p.health"), message_type="dockhand.heartbeat")
    await events(f"{HOST}.container.start", event())
    await events(f"{HOST}.container.die", event("die"))
    await health(f"{HOST}.heartbeat", heartbeat())
    bodies = [json.loads(payload) for payload, _ in broker.published]
    assert [(b["seq"], b["epoch"]) for b in bodies[:2]] == [(1, sequencer.epoch), (2, sequencer.epoch)]
    assert [options["routing_key"] for _, options in broker.published[:2]] == [
        f"{HOST}.container.start",
        f"{HOST}.container.die",
    ]
    # What goes out parses as the strict wire model (seq an int, epoch a string).
    parsed = ContainerEvent.model_validate_json(broker.published[0][0])
    assert (parsed.seq, parsed.epoch) == (1, sequencer.epoch)
    # Heartbeats are not events: nothing is added to them.
    assert "seq" not in bodies[2]
    assert "epoch" not in bodies[2]
    Heartbeat.model_validate_json(broker.published[2][0])


def heartbeat() -> Heartbeat:
    return Heartbeat(
        host_id=HOST,
        worker_id=f"{HOST}-0",
        status="healthy",
        time=WHEN,
        uptime_s=1.0,
        version="0",
        docker=DockerHealth(reachable=True),
        commands=CommandCounters(),
        events=EventStreamHealth(stream_connected=True),
    )


def test_v1_event_without_seq_still_parses() -> None:
    body = event().model_dump_json(exclude={"seq", "epoch"})
    assert "seq" not in json.loads(body)
    parsed = ContainerEvent.model_validate_json(body)
    assert (parsed.seq, parsed.epoch) == (None, None)
    with pytest.raises(ValueError, match="seq"):
        ContainerEvent.model_validate_json(json.dumps({**json.loads(body), "seq": "7"}))  # strict: an integer


async def test_event_stream_and_discovery_number_their_families_apart() -> None:
    """The real pipeline (Docker faked): container, network and discovery messages each count
    by one, the startup and periodic snapshots within the discovery family."""
    config = Settings(host_id=HOST, worker_id=f"{HOST}-test", docker_host=None)
    ops = DockerOps(events_docker(), config, NAMES, Policy(config, NAMES))  # type: ignore[arg-type]
    sequencer, rec = EventSequencer(), Recorder()

    async def publish(routing_key: str, model: WireModel) -> None:
        await sequencer.publish(routing_key, model, rec)

    stream = EventStream(ops, config, Discovery(ops, publish), publish)
    await stream._reconcile("startup")
    await stream._handle(container_event("start", WEB_ID, "web", {"dockhand.enabled": "true"}), received())
    await stream._handle(network_event("connect", WEB_ID, t=T0 + 1), received(T0 + 1))
    await stream._handle(
        container_event("die", WEB_ID, "web", {"dockhand.enabled": "true"}, t=T0 + 2, exitCode="0"), received(T0 + 2)
    )
    await stream._reconcile("periodic")
    assert [(key.split(".", 1)[1], seq) for key, seq, _ in numbered(rec)] == [
        ("discovery.snapshot", 1),
        ("container.start", 1),
        ("discovery.added", 2),
        ("network.connect", 1),
        ("container.die", 2),
        ("discovery.removed", 3),
        ("discovery.snapshot", 4),
    ]
    assert {epoch for _, _, epoch in numbered(rec)} == {sequencer.epoch}
