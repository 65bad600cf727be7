"""The broker side of the dispatcher, faked: a delivered message and a confirmed publisher.

:class:`FakeMessage` is what FastStream hands the dispatcher for one delivery (a
``RabbitMessage``: ``body``, ``raw_message`` with the AMQP properties, ``ack`` / ``nack`` /
``reject``) and records how it was settled. :class:`Recorder` is a ``publish(routing_key,
model)`` function (:data:`~dockhand.worker.publishing.Publish`) that keeps what it was given.
:class:`FakePublisher` stands in for
:class:`~dockhand.worker.publishing.Publisher`: it records every confirmed publish, and can be
made to fail (a broker that never confirms) for every publish or for the ones a predicate picks::

    publisher = FakePublisher()
    publisher.fail(when=is_dead_letter)   # results go out, dead letters do not
    message = FakeMessage({"command_id": "c1", "type": "host.info"}, "host-a.host.info")
    dispatcher.submit(message.body, message)
    assert await message.settled_once() == ("nack", True)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import aio_pika

from dockhand.schemas import DiscoveryEvent, WireModel

Options = dict[str, Any]
"""The keyword arguments of one ``Publisher.confirmed`` call (exchange, routing_key, headers, ...)."""


def is_result(options: Options) -> bool:
    """A result published to the results exchange."""
    return options.get("message_type") == "dockhand.result" and "exchange" in options


def is_reply(options: Options) -> bool:
    """A result published to the sender's ``reply_to`` queue (the default exchange)."""
    return options.get("message_type") == "dockhand.result" and "exchange" not in options


def is_dead_letter(options: Options) -> bool:
    """A (redacted) copy published to the dead-letter exchange."""
    return bool(getattr(options.get("exchange"), "name", "").endswith(".dead"))


class FakeMessage:
    """One delivery: its body and properties, and every settle call made on it.

    :attr:`settlements` lists ``(how, requeue)`` per call — ``("ack", False)``,
    ``("nack", True)``, ``("reject", False)`` — and :attr:`settled` the names alone. Set
    :attr:`broken` to make every settle call raise it (the channel closed under the worker);
    the attempt is still recorded.
    """

    def __init__(
        self,
        body: bytes | dict[str, Any],
        routing_key: str,
        *,
        user_id: str | None = None,
        redelivered: bool = False,
        headers: dict[str, Any] | None = None,
        correlation_id: str | None = "corr-1",
        reply_to: str | None = None,
        message_id: str | None = "m-1",
        channel: FakeTxChannel | None = None,
    ) -> None:
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.raw_message = SimpleNamespace(
            channel=channel,
            delivery_tag=None,  # not from a broker: the dispatcher does not reorder it
            routing_key=routing_key,
            user_id=user_id,
            redelivered=redelivered,
            headers=dict(headers or {}),
            correlation_id=correlation_id,
            reply_to=reply_to,
            message_id=message_id,
            type=None,
            timestamp=None,
        )
        self.settlements: list[tuple[str, bool]] = []
        self.broken: Exception | None = None
        self.done = asyncio.Event()

    @property
    def settled(self) -> list[str]:
        return [how for how, _ in self.settlements]

    async def _settle(self, how: str, requeue: bool) -> None:
        self.settlements.append((how, requeue))
        self.done.set()
        if self.broken is not None:
            raise self.broken
        if self.raw_message.channel is not None:
            self.raw_message.channel.pending.append((how, requeue, self))

    async def ack(self) -> None:
        await self._settle("ack", False)

    async def reject(self, requeue: bool = False) -> None:
        await self._settle("reject", requeue)

    async def nack(self, requeue: bool = True) -> None:
        await self._settle("nack", requeue)

    async def wait_settled(self, timeout: float = 5) -> list[str]:
        """The settle calls, once there is at least one."""
        await asyncio.wait_for(self.done.wait(), timeout)
        return self.settled

    async def settled_once(self, timeout: float = 5) -> tuple[str, bool]:
        """The one settle call this message got (it fails when there were more)."""
        await asyncio.wait_for(self.done.wait(), timeout)
        await asyncio.sleep(0)  # a second settle call would come now
        assert len(self.settlements) == 1, self.settlements
        return self.settlements[0]


class FakePublisher:
    """Records confirmed publishes; :meth:`fail` makes chosen ones raise instead."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Options]] = []
        self.refused: list[tuple[bytes, Options]] = []  # publishes that failed
        self._failing: list[tuple[Callable[[Options], bool], Exception]] = []

    def fail(self, when: Callable[[Options], bool] = lambda _: True, error: Exception | None = None) -> None:
        """From now on, a publish that ``when`` picks raises ``error`` (after the retries)."""
        self._failing.append((when, error or ConnectionError("no confirm from the broker")))

    def heal(self) -> None:
        """Every publish succeeds again."""
        self._failing.clear()

    async def confirmed(self, payload: bytes, **options: Any) -> None:
        for when, error in self._failing:
            if when(options):
                self.refused.append((payload, options))
                raise error
        self.sent.append((payload, options))

    def sent_bodies(self) -> list[dict[str, Any]]:
        """Every payload published, whatever its destination, decoded."""
        return [json.loads(payload) for payload, _ in self.sent]

    def results(self, command_id: str | None = None) -> list[dict[str, Any]]:
        """The results published to the results exchange (for ``command_id``), decoded."""
        bodies = [json.loads(payload) for payload, options in self.sent if is_result(options)]
        return [b for b in bodies if command_id is None or b["command_id"] == command_id]

    def replies(self) -> list[tuple[dict[str, Any], Options]]:
        """The results sent to a ``reply_to`` queue, decoded, with their options."""
        return [(json.loads(payload), options) for payload, options in self.sent if is_reply(options)]

    def dead_letters(self) -> list[tuple[bytes, Options]]:
        return [(p, o) for p, o in self.sent if is_dead_letter(o)]

    def message(self, payload: bytes, **options: Any) -> aio_pika.Message:
        """The message a publish in a transaction sends (its properties as the real publisher's)."""
        return aio_pika.Message(
            payload,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT if options.get("persist") else None,
            correlation_id=options.get("correlation_id"),
            type=options.get("message_type"),
            headers=options.get("headers") or {},
        )


class FakeTxChannel:
    """An aiormq channel in transaction mode: publishes and settles written after ``tx_select``
    take effect at ``tx_commit`` (into :attr:`committed`); ``close`` discards them.

    Set :attr:`fail_commit` to make the next commits raise (and close the channel, as aiormq
    does); :attr:`gate` (cleared) holds every commit until it is set.
    """

    def __init__(self) -> None:
        self.selected = False
        self.closed = False  # also as aiormq's ``is_closed``
        self.pending: list[tuple[Any, ...]] = []
        self.committed: list[tuple[Any, ...]] = []  # ("publish", exchange, key, body) / (how, requeue, message)
        self.commits = 0
        self.fail_commit: Exception | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    @property
    def is_closed(self) -> bool:
        return self.closed

    async def tx_select(self, timeout: float | None = None) -> None:
        self.selected = True

    async def basic_publish(self, body: bytes, *, exchange: str, routing_key: str, properties: Any) -> None:
        assert self.selected, "a publish outside a transaction"
        assert not self.closed, "a publish on a closed channel"
        self.pending.append(("publish", exchange, routing_key, body, properties))

    async def tx_commit(self, timeout: float | None = None) -> None:
        await self.gate.wait()
        if self.closed:
            raise ConnectionResetError("channel closed")  # as aiormq's ChannelInvalidStateError
        if self.fail_commit is not None:
            await self.close()
            raise self.fail_commit
        self.commits += 1
        self.committed += self.pending
        self.pending = []

    async def close(self) -> None:
        self.closed = True
        self.pending = []

    def published(self, exchange: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        """The committed publishes (on ``exchange``): (exchange, routing key, decoded body)."""
        return [
            (e, key, json.loads(body))
            for kind, e, key, body, *_ in (c for c in self.committed if c[0] == "publish")
            if exchange is None or e == exchange
        ]

    def settles(self) -> list[tuple[str, bool]]:
        """The committed settles, in order: (how, requeue)."""
        return [(c[0], c[1]) for c in self.committed if c[0] != "publish"]


class Recorder:
    """A :data:`~dockhand.worker.publishing.Publish` that records ``(routing_key, model)``; each
    model must survive the wire first (strict models, a JSON round trip)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, WireModel]] = []

    async def __call__(self, routing_key: str, model: WireModel) -> None:
        type(model).model_validate_json(model.model_dump_json())
        self.messages.append((routing_key, model))

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.messages]

    def last(self) -> Any:
        return self.messages[-1][1]

    def events(self) -> list[DiscoveryEvent]:
        return [m for _, m in self.messages if isinstance(m, DiscoveryEvent)]

    def clear(self) -> None:
        self.messages.clear()
