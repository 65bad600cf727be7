"""Publishing with publisher confirms: a publish returns only once the broker has the message."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import aio_pika
import aio_pika.abc
import aiormq
import aiormq.abc
from faststream.rabbit import RabbitExchange

from dockhand.schemas import WireModel

from .retry import once_then_retry
from .telemetry import carry_trace

log = logging.getLogger("dockhand.publish")

if TYPE_CHECKING:
    from faststream.rabbit import RabbitBroker

Publish = Callable[[str, WireModel], Awaitable[None]]
"""A confirmed publish of one wire model under a routing key (results, events, heartbeats)."""


DEFAULT_EXCHANGE = RabbitExchange()
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
        self, payload: bytes, *, exchange: RabbitExchange | None = None, routing_key: str = "", **options: Any
    ) -> None:
        """One confirmed publish as FastStream's would make it (the same properties, see
        :meth:`message`), through the broker's own declarer (its channel, its cached exchange
        objects, its reconnects)."""
        target = await self.broker.config.declarer.declare_exchange(exchange or DEFAULT_EXCHANGE, declare=False)
        await target.publish(self.message(payload, **options), routing_key=routing_key, mandatory=False)

    def message(
        self,
        payload: bytes,
        *,
        persist: bool = False,
        headers: dict[str, Any] | None = None,
        correlation_id: str | None = None,
        message_type: str | None = None,
        message_id: str | None = None,
        reply_to: str | None = None,
        timestamp: datetime | None = None,
    ) -> aio_pika.Message:
        """The message FastStream's publish would make of ``payload`` (the current trace context
        in its headers)."""
        config = self.broker.config
        headers = dict(headers) if headers else {}
        carry_trace(headers)
        return aio_pika.Message(
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
            await send(routing_key, self.number(routing_key, model))

    def number(self, routing_key: str, model: WireModel) -> WireModel:
        """``model`` with the next ``seq`` of its family and the epoch (taken now, for good).

        For a caller that puts the result in its publish order at once, with no await in
        between (:class:`EventPipeline`): then that order is the ``seq`` order.
        """
        family = routing_key.split(".", 2)[1]
        seq = self._next.get(family, 1)
        self._next[family] = seq + 1
        # A shallow copy without validation: the model is already valid, and the caller's
        # object stays as it was.
        return model.model_copy(update={"seq": seq, "epoch": self.epoch})


ChannelSource = Callable[[], Awaitable[aiormq.abc.AbstractChannel]]
"""The current channel (publisher confirms on) to publish on; raises while there is none."""


def broker_channel(broker: RabbitBroker) -> ChannelSource:
    """A channel of the broker's connection for the events alone (FastStream opens it once and
    drops it on disconnect; the robust connection restores it after a reconnect)."""
    from faststream.rabbit.schemas import Channel

    own = Channel()  # FastStream keys its channels by identity: this one is ours

    async def channel() -> aiormq.abc.AbstractChannel:
        robust: aio_pika.abc.AbstractChannel = await broker.config.channel_manager.get_channel(own)
        return await robust.get_underlay_channel()

    return channel


@dataclass(eq=False, slots=True)
class _Pending:
    """One numbered event on its way: queued, then written (``sent``), then confirmed."""

    routing_key: str
    body: bytes
    properties: aiormq.spec.Basic.Properties
    sent: asyncio.Future[Any] | None = None
    sent_at: float = 0.0


class EventPipeline:
    """Confirmed publishing of the host's events without a confirm round trip per event.

    A publish numbers the event (:class:`EventSequencer`) and appends it to one queue in the
    same step, with no await in between, so the queue's order is every family's ``seq`` order
    and the callers' order (a ``container.start`` before the ``discovery.added`` it causes).
    One task writes the queue to one channel in that order and does not wait for a confirm
    before writing the next message: AMQP keeps a channel's order, and the broker confirms in a
    window (at most ``window`` messages queued or unconfirmed; a publish waits for room, which
    is what fills the Docker event queue and ends in its overflow → resync when the broker is
    gone).

    A message that fails (nack, lost channel, no confirm within ``confirm_timeout_s``) cannot
    be sent again where it was: later ones may be on the wire already. Writing stops, every
    unconfirmed message is settled, and the failed ones are sent again in ``seq`` order, one
    confirmed publish at a time, retried with backoff for up to ``retry_budget_s``; only then
    does writing resume. A consumer may therefore see a run of ``seq`` again (a repeat, lower
    than or equal to the last it saw: ignored) and, after a nack, a later message before the
    repeat (a gap: it resyncs). What cannot be sent within the budget is lost for good: its
    ``seq`` stays a gap, and the ``on_lost`` listeners are told (the event stream resyncs).
    """

    def __init__(
        self,
        sequencer: EventSequencer,
        channel: ChannelSource,
        exchange: str,
        *,
        window: int = 256,
        confirm_timeout_s: float = 30.0,
        retry_budget_s: float = 30.0,
    ) -> None:
        self.sequencer = sequencer
        self._channel = channel
        self._exchange = exchange
        self._window = window
        self._confirm_timeout_s = confirm_timeout_s
        self._retry_budget_s = retry_budget_s
        self._queued: deque[_Pending] = deque()  # numbered, not written yet
        self._unconfirmed: deque[_Pending] = deque()  # written, in write order
        self._sent_on: aiormq.abc.AbstractChannel | None = None  # the channel of ``_unconfirmed``
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._failing = False  # a written message failed: write nothing more until it is repaired
        self._generation = 0  # counts recoveries: tells a write's late callback from a current one
        self.confirmed = 0
        self.resent = 0
        self.lost = 0
        # Called with the number of messages given up (their seqs are gaps).
        self.on_lost: list[Callable[[int], None]] = []

    @property
    def in_flight(self) -> int:
        """Messages queued or written but not confirmed yet."""
        return len(self._queued) + len(self._unconfirmed)

    def to(self, message_type: str) -> Publish:
        """A ``publish(routing_key, model)`` for this pipeline: it returns once the event is
        numbered and queued in order, not when the broker confirms it."""

        async def publish(routing_key: str, model: WireModel) -> None:
            await self.publish(routing_key, model, message_type)

        return publish

    async def publish(self, routing_key: str, model: WireModel, message_type: str) -> None:
        """Number ``model`` and queue it (after waiting for room in the window)."""
        while self.in_flight >= self._window:
            self._room.clear()
            await self._room.wait()
        # From here on no await: the number and the place in the queue are taken together.
        numbered = self.sequencer.number(routing_key, model)
        properties = aiormq.spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=2,
            message_type=message_type,
            timestamp=datetime.now(UTC),
        )
        self._queued.append(_Pending(routing_key, numbered.model_dump_json().encode(), properties))
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump(), name="dockhand-event-pipeline")

    async def flush(self) -> None:
        """Wait until every message queued so far is confirmed or given up."""
        await self._idle.wait()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Flush (for at most ``timeout_s``), then stop the writer."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.flush()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # --- the writer ---------------------------------------------------------------------------

    async def _pump(self) -> None:
        while True:
            try:
                await self._turn()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug here must not stop the events for good: log it, carry on.
                log.exception("event pipeline failed; carrying on")
                await asyncio.sleep(0.1)

    async def _turn(self) -> None:
        """Write, settle and wait until something changes (or the oldest confirm is late)."""
        while True:
            self._wake.clear()
            # Settle first: nothing new is written once a failure is known (seq order).
            if self._settle_confirmed() or await self._write():
                await self._recover()
                continue
            if not self._queued and not self._unconfirmed:
                self._idle.set()
            if self.in_flight < self._window:
                self._room.set()
            timeout = None
            if self._unconfirmed:
                deadline = self._unconfirmed[0].sent_at + self._confirm_timeout_s
                timeout = max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                await self._recover()  # the oldest message has no confirm in time

    async def _write(self) -> bool:
        """Write what is queued (up to the window); True when a write failed."""
        while self._queued and len(self._unconfirmed) < self._window and not self._failing:
            try:
                channel = await self._channel()
            except Exception as exc:
                log.warning("event publish failed (%s: %s); retrying", type(exc).__name__, exc)
                return True
            if channel is not self._sent_on and self._unconfirmed:
                return False  # a new channel: the old one's messages settle first (order)
            self._sent_on = channel
            item = self._queued.popleft()
            # aiormq's basic_publish takes the channel's FIFO lock before its first await, and
            # each task makes its first step in creation order: the write order is this order.
            item.sent = asyncio.ensure_future(
                channel.basic_publish(
                    item.body,
                    exchange=self._exchange,
                    routing_key=item.routing_key,
                    properties=item.properties,
                    mandatory=False,
                )
            )
            item.sent.add_done_callback(partial(self._on_sent, self._generation))
            item.sent_at = time.monotonic()
            self._unconfirmed.append(item)
        return self._failing

    def _on_sent(self, generation: int, sent: asyncio.Future[Any]) -> None:
        # Retrieved here (the pump handles a failure, asyncio need not log it), and noted at
        # once, so that the writer stops before its next write; a callback that runs after its
        # write was settled by a recovery (callbacks run a loop turn late) changes nothing.
        if not sent.cancelled() and sent.exception() is not None and generation == self._generation:
            self._failing = True
        self._wake.set()

    def _settle_confirmed(self) -> bool:
        """Drop the confirmed head of the window; True when a message failed."""
        while self._unconfirmed:
            sent = self._unconfirmed[0].sent
            assert sent is not None
            if not sent.done():
                return False
            if sent.cancelled() or sent.exception() is not None:
                return True
            self._unconfirmed.popleft()
            self.confirmed += 1
        return False

    async def _recover(self) -> None:
        """Settle every written message, then send the failed ones again in seq order."""
        deadline = time.monotonic() + self._confirm_timeout_s
        pending = [item.sent for item in self._unconfirmed if item.sent is not None and not item.sent.done()]
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
        failed: list[_Pending] = []
        for item in self._unconfirmed:
            sent = item.sent
            assert sent is not None
            if not sent.done():
                sent.cancel()  # no confirm in time: unknown, so sent again (a repeat at worst)
                failed.append(item)
            elif sent.cancelled() or sent.exception() is not None:
                failed.append(item)
            else:
                self.confirmed += 1
        self._unconfirmed.clear()
        self._sent_on = None
        self._failing = False
        self._generation += 1
        if not failed and self._queued:
            failed.append(self._queued.popleft())  # getting a channel failed: that one first
        if failed:
            reasons = [
                i.sent.exception() for i in failed if i.sent is not None and i.sent.done() and not i.sent.cancelled()
            ]
            reason = next((r for r in reasons if r is not None), "no confirm in time")
            log.warning("%d event publish(es) failed (%s); sending them again in seq order", len(failed), reason)
        budget_end = time.monotonic() + self._retry_budget_s
        for index, item in enumerate(failed):
            left = budget_end - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError("retry budget spent")
                await once_then_retry(partial(self._send_one, item), on=Exception, attempts=None, budget_s=left)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                lost = len(failed) - index
                self.lost += lost
                log.error(
                    "%d event(s) could not be published (%s: %s): their seq stay gaps", lost, type(exc).__name__, exc
                )
                for listener in self.on_lost:
                    listener(lost)
                return
            self.resent += 1
            self.confirmed += 1

    async def _send_one(self, item: _Pending) -> None:
        channel = await self._channel()
        async with asyncio.timeout(self._confirm_timeout_s):
            await channel.basic_publish(
                item.body,
                exchange=self._exchange,
                routing_key=item.routing_key,
                properties=item.properties,
                mandatory=False,
            )
