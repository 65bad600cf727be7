"""Publishing with publisher confirms: a publish returns only once the broker has the message."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import aio_pika
from faststream.rabbit import RabbitExchange

from dockhand.schemas import WireModel

from .retry import once_then_retry
from .telemetry import carry_trace

log = logging.getLogger("dockhand.publish")

if TYPE_CHECKING:
    from faststream.rabbit import RabbitBroker

Publish = Callable[[str, WireModel], Awaitable[None]]
"""A confirmed publish of one wire model under a routing key (results, events, heartbeats)."""


_DEFAULT_EXCHANGE = RabbitExchange()
"""AMQP's default exchange (a ``reply_to`` queue is its routing key)."""


class Publisher:
    """Confirmed, retried publishing of wire models (results, events, heartbeats)."""

    def __init__(
        self, broker: RabbitBroker, *, attempts: int | None = None, timeout_s: float = 30.0, direct: bool = False
    ) -> None:
        self.broker = broker
        self._attempts = attempts
        self._timeout_s = timeout_s
        self._direct = direct

    async def confirmed(self, payload: bytes, **options: Any) -> None:
        """Publish and wait for the broker's confirm; retry a failed publish, with backoff, for up
        to ``timeout_s`` (a broker restart takes seconds: a count of quick attempts would not
        outlast it).

        ``mandatory=False``: an exchange with no bound queue is not an error. With ``direct``
        (the worker sets it when no span is recorded), the message goes to aio-pika's exchange
        object at once, past FastStream's publish path (its command object and middlewares:
        about a quarter of a confirmed publish's CPU); the message on the wire is the same.
        """
        send = (
            partial(self._publish_direct, payload, **options)
            if self._direct
            else partial(self.broker.publish, payload, mandatory=False, content_type="application/json", **options)
        )
        await once_then_retry(
            send,
            on=Exception,
            attempts=self._attempts,
            budget_s=self._timeout_s,
            first_failed=lambda exc: log.warning("publish failed (%s: %s); retrying", type(exc).__name__, exc),
        )

    async def _publish_direct(
        self,
        payload: bytes,
        *,
        exchange: RabbitExchange | None = None,
        routing_key: str = "",
        persist: bool = False,
        headers: dict[str, Any] | None = None,
        correlation_id: str | None = None,
        message_type: str | None = None,
        message_id: str | None = None,
        reply_to: str | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        """One confirmed publish as FastStream's would make it (the same properties), through the
        broker's own declarer (its channel, its cached exchange objects, its reconnects)."""
        config = self.broker.config
        target = await config.declarer.declare_exchange(exchange or _DEFAULT_EXCHANGE, declare=False)
        headers = dict(headers) if headers else {}
        carry_trace(headers)
        message = aio_pika.Message(
            payload,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT if persist else aio_pika.DeliveryMode.NOT_PERSISTENT,
            headers=headers,
            correlation_id=correlation_id or config.id_generator(),
            message_id=message_id,
            reply_to=reply_to,
            timestamp=timestamp or datetime.now(UTC),
            type=message_type,
            app_id=config.app_id,
        )
        await target.publish(message, routing_key=routing_key, mandatory=False)

    def to(self, exchange: RabbitExchange, *, message_type: str, sequencer: EventSequencer | None = None) -> Publish:
        """A ``publish(routing_key, model)`` function for one exchange; with a ``sequencer``,
        every model is published with its ``seq`` and ``epoch`` (the events exchange)."""

        async def publish(routing_key: str, model: WireModel) -> None:
            await self.confirmed(
                model.model_dump_json().encode(),
                exchange=exchange,
                routing_key=routing_key,
                persist=True,
                message_type=message_type,
            )

        if sequencer is None:
            return publish

        async def publish_in_sequence(routing_key: str, model: WireModel) -> None:
            await sequencer.publish(routing_key, model, publish)

        return publish_in_sequence


class EventSequencer:
    """``seq`` and ``epoch`` of the host's events (contract v1.1, "Event sequence numbers").

    One per worker, shared by everything that publishes on the events exchange, so each family
    (the routing key's second word: ``container``, ``network``, ``discovery``, ``workspace``)
    has one counter whatever the publisher. :meth:`new_epoch` is called when this worker
    becomes the host's event publisher: a consumer cannot tell which messages of an earlier
    epoch (ours or another worker's) it missed, so it resyncs on a new epoch, and the counters
    start again at 1.
    """

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(8)
        self._next: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def new_epoch(self) -> str:
        """Start a fresh epoch (a random hex string); every family counts from 1 again."""
        self.epoch = secrets.token_hex(8)
        self._next = {}
        log.info("event epoch %s: sequence numbers start again at 1", self.epoch)
        return self.epoch

    async def publish(self, routing_key: str, model: WireModel, send: Publish) -> None:
        """Number ``model`` within its family and hand it to ``send`` (a confirmed publish).

        Assigning and publishing happen under the family's lock, so the broker receives each
        family's messages in ``seq`` order even if several tasks publish at once. The number is
        taken before the publish and never handed out again: if the publish fails for good,
        that ``seq`` is a gap, which is exactly what tells a consumer it may have missed
        something and must resync (reusing it would hide the loss).
        """
        family = routing_key.split(".", 2)[1]
        lock = self._locks.get(family)
        if lock is None:
            lock = self._locks[family] = asyncio.Lock()
        async with lock:
            seq = self._next.get(family, 1)
            self._next[family] = seq + 1
            # A shallow copy without validation: the model is already valid, and the caller's
            # object stays as it was.
            await send(routing_key, model.model_copy(update={"seq": seq, "epoch": self.epoch}))
