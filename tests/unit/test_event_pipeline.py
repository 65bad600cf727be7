"""The events pipeline (worker/publishing.py ``EventPipeline``): events are written in ``seq``
order without waiting for each confirm, and a failed confirm is repaired in that order."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import aiormq
import pytest
import stamina

from dockhand.schemas import ContainerEvent
from dockhand.schemas.events import ContainerRef
from dockhand.worker.discovery import Discovery
from dockhand.worker.docker import DockerOps
from dockhand.worker.events import EventStream
from dockhand.worker.policy import Policy
from dockhand.worker.publishing import EventPipeline, EventSequencer
from dockhand.worker.settings import Settings

from .test_events import HOST, NAMES, WEB_ID, container_event, events_docker, received

WHEN = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def stamina_testing() -> Iterator[None]:
    with stamina.set_testing(True, attempts=3):
        yield


def event(action: str = "start") -> ContainerEvent:
    return ContainerEvent(
        event_id=action, host_id=HOST, type=f"container.{action}", time=WHEN, container=ContainerRef(id="c1")
    )


class FakeChannel:
    """A channel whose confirms the test decides. ``wire`` is the write order: each publish is
    recorded in its first step, as aiormq's basic_publish takes its FIFO lock there."""

    def __init__(self, name: str = "ch") -> None:
        self.name = name
        self.wire: list[tuple[str, int, str]] = []  # (family, seq, routing key)
        self.confirms: dict[tuple[str, int], asyncio.Future[None]] = {}
        self.closed = False

    async def basic_publish(self, body: bytes, *, exchange: str, routing_key: str, **options: Any) -> Any:
        assert exchange == "p.events"
        assert options["mandatory"] is False
        properties = options["properties"]
        assert (properties.delivery_mode, properties.content_type) == (2, "application/json")
        if self.closed:
            raise aiormq.exceptions.ChannelInvalidStateError("closed")
        seq = json.loads(body)["seq"]
        family = routing_key.split(".")[1]
        self.wire.append((family, seq, routing_key))
        confirm = self.confirms[(family, seq)] = asyncio.get_running_loop().create_future()
        await confirm
        return aiormq.spec.Basic.Ack()

    def ack(self, family: str, seq: int) -> None:
        self.confirms[(family, seq)].set_result(None)

    def nack(self, family: str, seq: int) -> None:
        self.confirms[(family, seq)].set_exception(aiormq.exceptions.DeliveryError(None, aiormq.spec.Basic.Nack()))

    def close(self) -> None:
        """The connection is lost: every unconfirmed publish fails."""
        self.closed = True
        for confirm in self.confirms.values():
            if not confirm.done():
                confirm.set_exception(aiormq.exceptions.ChannelInvalidStateError("connection lost"))

    def unconfirmed(self) -> list[tuple[str, int]]:
        return [key for key, confirm in self.confirms.items() if not confirm.done()]


class AutoAck(FakeChannel):
    """Confirms every publish after a random delay, so confirms come back out of order."""

    async def basic_publish(self, body: bytes, *, exchange: str, routing_key: str, **options: Any) -> Any:
        seq = json.loads(body)["seq"]
        family = routing_key.split(".")[1]
        self.wire.append((family, seq, routing_key))
        await asyncio.sleep(random.uniform(0, 0.005))
        return aiormq.spec.Basic.Ack()


class Channels:
    """The channel source: the current channel, replaced as a reconnect would."""

    def __init__(self, channel: FakeChannel) -> None:
        self.current = channel
        self.fail = False

    async def __call__(self) -> Any:
        if self.fail:
            raise aiormq.exceptions.ChannelInvalidStateError("Channel was not opened")
        return self.current


def pipeline(channel: FakeChannel, **options: Any) -> tuple[EventPipeline, Channels]:
    channels = Channels(channel)
    return EventPipeline(EventSequencer(), channels, "p.events", **options), channels


async def until(check: Any, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.001)


async def test_writes_run_ahead_of_confirms_and_follow_seq_order() -> None:
    channel = FakeChannel()
    events, _ = pipeline(channel)
    for action in ("create", "start", "die"):
        await events.publish(f"{HOST}.container.{action}", event(action), "dockhand.event")
    await events.publish(f"{HOST}.discovery.added", event(), "dockhand.discovery")
    # Every publish has returned, all four are on the wire, and none is confirmed yet.
    await until(lambda: len(channel.wire) == 4)
    assert [(f, s) for f, s, _ in channel.wire] == [
        ("container", 1),
        ("container", 2),
        ("container", 3),
        ("discovery", 1),
    ]
    assert events.confirmed == 0
    assert events.in_flight == 4
    # Confirms in any order; the pipeline counts them and becomes idle.
    for key in [("discovery", 1), ("container", 3), ("container", 1), ("container", 2)]:
        channel.ack(*key)
    await asyncio.wait_for(events.flush(), 1)
    assert (events.confirmed, events.resent, events.lost) == (4, 0, 0)
    await events.close()


async def test_concurrent_publishers_reach_the_wire_in_seq_order_per_family() -> None:
    channel = AutoAck()
    events, _ = pipeline(channel, window=16)
    keys = [f"{HOST}.container.start", f"{HOST}.discovery.added", f"{HOST}.network.connect"] * 100
    random.shuffle(keys)

    async def publisher(mine: list[str]) -> None:
        for key in mine:
            await events.publish(key, event(), "dockhand.event")
            await asyncio.sleep(random.uniform(0, 0.001))

    await asyncio.gather(*(publisher(keys[i::5]) for i in range(5)))
    await asyncio.wait_for(events.flush(), 5)
    for family in ("container", "discovery", "network"):
        assert [s for f, s, _ in channel.wire if f == family] == list(range(1, 101))
    assert events.confirmed == 300
    await events.close()


async def test_a_full_window_makes_the_publisher_wait_without_taking_a_number() -> None:
    channel = FakeChannel()
    events, _ = pipeline(channel, window=3)
    for action in ("create", "start", "die"):
        await events.publish(f"{HOST}.container.{action}", event(action), "dockhand.event")
    fourth = asyncio.ensure_future(events.publish(f"{HOST}.container.destroy", event("destroy"), "dockhand.event"))
    await until(lambda: len(channel.wire) == 3)
    await asyncio.sleep(0.01)
    assert not fourth.done()
    assert events.sequencer.number(f"{HOST}.network.create", event()).seq == 1  # (another family: free)
    channel.ack("container", 1)
    await asyncio.wait_for(fourth, 1)
    await until(lambda: len(channel.wire) == 4)
    assert channel.wire[-1][:2] == ("container", 4)
    for seq in (2, 3, 4):
        channel.ack("container", seq)
    await asyncio.wait_for(events.flush(), 1)
    await events.close()


async def test_a_nack_is_sent_again_in_seq_order_before_anything_newer() -> None:
    channel = FakeChannel()
    events, _ = pipeline(channel)
    for action in ("create", "start", "die"):
        await events.publish(f"{HOST}.container.{action}", event(action), "dockhand.event")
    await until(lambda: len(channel.wire) == 3)
    channel.ack("container", 1)
    channel.ack("container", 3)
    channel.nack("container", 2)
    # Published while the failed one is being repaired: it waits behind the repeat.
    await events.publish(f"{HOST}.container.destroy", event("destroy"), "dockhand.event")
    await until(lambda: len(channel.wire) == 4)
    await asyncio.sleep(0.01)
    assert [s for _, s, _ in channel.wire] == [1, 2, 3, 2]  # the repeat, nothing newer yet
    channel.ack("container", 2)
    await until(lambda: len(channel.wire) == 5)
    assert [s for _, s, _ in channel.wire] == [1, 2, 3, 2, 4]
    channel.ack("container", 4)
    await asyncio.wait_for(events.flush(), 1)
    assert (events.confirmed, events.resent, events.lost) == (4, 1, 0)
    await events.close()


async def test_a_lost_channel_sends_every_unconfirmed_event_again_in_order_on_the_new_one() -> None:
    old = FakeChannel("old")
    events, channels = pipeline(old)
    for action in ("create", "start", "die", "destroy"):
        await events.publish(f"{HOST}.container.{action}", event(action), "dockhand.event")
    await events.publish(f"{HOST}.discovery.added", event(), "dockhand.discovery")
    await until(lambda: len(old.wire) == 5)
    old.ack("container", 1)
    await until(lambda: events.confirmed == 1)
    new = channels.current = AutoAck("new")
    old.close()
    await events.publish(f"{HOST}.container.create", event("create"), "dockhand.event")
    await asyncio.wait_for(events.flush(), 2)
    # The unconfirmed ones again, in their order, then the newer one: no reordering, no loss.
    assert [(f, s) for f, s, _ in new.wire] == [
        ("container", 2),
        ("container", 3),
        ("container", 4),
        ("discovery", 1),
        ("container", 5),
    ]
    assert (events.confirmed, events.resent, events.lost) == (6, 4, 0)
    await events.close()


async def test_a_publish_that_fails_for_good_is_a_gap_and_asks_for_a_resync() -> None:
    channel = FakeChannel()
    events, channels = pipeline(channel, retry_budget_s=1.0)
    lost: list[int] = []
    events.on_lost.append(lost.append)
    await events.publish(f"{HOST}.container.create", event("create"), "dockhand.event")
    await until(lambda: len(channel.wire) == 1)
    channel.ack("container", 1)
    await events.publish(f"{HOST}.container.start", event("start"), "dockhand.event")
    await until(lambda: len(channel.wire) == 2)
    channels.fail = True  # the broker is gone: every attempt to send seq 2 again fails
    channel.nack("container", 2)
    await asyncio.wait_for(events.flush(), 2)
    assert lost == [1]
    assert (events.confirmed, events.lost) == (1, 1)
    # The broker is back: the next event goes out with the next seq; 2 stays a gap.
    channels.fail = False
    channels.current = new = AutoAck("new")
    await events.publish(f"{HOST}.container.die", event("die"), "dockhand.event")
    await asyncio.wait_for(events.flush(), 1)
    assert [s for _, s, _ in new.wire] == [3]
    await events.close()


async def test_no_confirm_in_time_is_sent_again() -> None:
    channel = FakeChannel()
    events, channels = pipeline(channel, confirm_timeout_s=0.05)
    await events.publish(f"{HOST}.container.start", event(), "dockhand.event")
    await until(lambda: len(channel.wire) == 1)
    channels.current = new = AutoAck("new")  # (the stuck one is never confirmed)
    await asyncio.wait_for(events.flush(), 2)
    assert [s for _, s, _ in new.wire] == [1]
    assert (events.confirmed, events.resent) == (1, 1)
    await events.close()


async def test_discovery_added_follows_its_start_without_waiting_for_the_start_confirm() -> None:
    """The real event stream and discovery on the pipeline (Docker faked): the ``discovery.added``
    of a start is written after the ``container.start`` and before the broker confirms it."""
    config = Settings(host_id=HOST, worker_id=f"{HOST}-test", docker_host=None)
    ops = DockerOps(events_docker(), config, NAMES, Policy(config, NAMES))  # type: ignore[arg-type]
    channel = FakeChannel()
    events, _ = pipeline(channel)
    stream = EventStream(ops, config, Discovery(ops, events.to("dockhand.discovery")), events.to("dockhand.event"))
    await stream._handle(container_event("start", WEB_ID, "web", {"dockhand.enabled": "true"}), received())
    await until(lambda: len(channel.wire) == 2)
    assert [key.split(".", 1)[1] for _, _, key in channel.wire] == ["container.start", "discovery.added"]
    assert channel.unconfirmed() == [("container", 1), ("discovery", 1)]  # neither confirmed yet
    channel.ack("discovery", 1)
    channel.ack("container", 1)
    await asyncio.wait_for(events.flush(), 1)
    await events.close()
