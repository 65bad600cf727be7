"""Answers in AMQP transactions: a command's reply and its message's settle commit together,
on the channel the command was delivered on.

With publisher confirms the worker could only publish the reply, wait for the confirm, note it
in the journal and then ack; a worker killed after the broker had the reply but before the note
was written sent it again after its restart (the command was redelivered), so the sender saw two
answers. In a transaction the reply and the ack (or the dead-lettering reject, a redacted
dead-letter copy, a requeue) take effect at ``tx.commit``: a worker killed before the commit
leaves none of them done — the command is redelivered and answered from the journal — and one
killed after it leaves all of them done, the command acked. ``tx.commit-ok`` comes once the
messages are safe, as a confirm would.

The result's copy for the results exchange is not in the transaction: it is published first,
with a confirm (see :meth:`.settle.Settler.finish`), because RabbitMQ drops a transactional
publish that a queue refuses (``x-overflow: reject-publish``) without telling the publisher,
where a confirm is a nack the worker retries.

Commits are batched per channel: whatever settles were written while the previous commit was
in flight go out in the next one, so concurrency costs one round trip per batch, not one per
command. A failure while a settle's frames are written closes the channel, so no half-written
answer can ride on a later commit: the broker discards the open transaction and gives every
unacked delivery back (answered again from the journal).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiormq.abc
from faststream.rabbit import RabbitExchange
from opentelemetry import trace

if TYPE_CHECKING:
    from faststream.rabbit import RabbitMessage

    from .publishing import Publisher

SettleAction = Callable[[], Awaitable[None]]
"""The settle of one delivery (its ack, reject or nack), written into the open transaction."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish in an answer's transaction: what :meth:`Publisher.confirmed` takes."""

    body: bytes
    exchange: RabbitExchange
    routing_key: str
    options: dict[str, Any]


class Transactions:
    """Commits answers: each one's publishes and settle in one transaction of its channel."""

    def __init__(self, publisher: Publisher, *, tracer: trace.Tracer | None = None, timeout_s: float = 30.0) -> None:
        self._publisher = publisher
        self._tracer = tracer
        self._timeout_s = timeout_s
        self._channels: dict[Any, _Channel] = {}  # by aiormq channel; closed ones are dropped

    async def commit(self, message: RabbitMessage, outgoing: Sequence[Outgoing], settle: SettleAction) -> None:
        """Publish ``outgoing`` and settle ``message`` atomically; return once committed.

        Raises what failed (the channel is closed then, or was already: the delivery goes back to
        its queue either way). A message with no broker channel (a test double, a tool) gets
        confirmed publishes, then its settle. With a ``tracer``, a publish is a PRODUCER span
        whose context the messages carry.
        """
        if self._tracer is None or not outgoing:
            await self._commit(message, outgoing, settle)
            return
        name = f"{outgoing[0].exchange.name or 'reply'} publish"
        with self._tracer.start_as_current_span(name, kind=trace.SpanKind.PRODUCER):
            await self._commit(message, outgoing, settle)

    async def _commit(self, message: RabbitMessage, outgoing: Sequence[Outgoing], settle: SettleAction) -> None:
        channel = message.raw_message.channel
        if channel is None:
            for item in outgoing:
                # The default exchange (a reply) is the publisher's default: not named.
                target = {"exchange": item.exchange} if item.exchange.name else {}
                await self._publisher.confirmed(item.body, routing_key=item.routing_key, **target, **item.options)
            await settle()
            return
        tx = self._channels.get(channel)
        if tx is None:
            # A new channel (the first delivery, or a reconnect): forget the closed ones.
            self._channels = {c: t for c, t in self._channels.items() if not c.is_closed}
            tx = self._channels[channel] = _Channel(channel, self._timeout_s)
        frames = []
        for item in outgoing:
            built = self._publisher.message(item.body, **item.options)
            frames.append((item.exchange.name, item.routing_key, built.body, built.properties))
        await tx.commit(frames, settle)


class _Channel:
    """One consumer channel in transaction mode, with its batched commits."""

    def __init__(self, channel: aiormq.abc.AbstractChannel, timeout_s: float) -> None:
        self.channel = channel
        self.timeout_s = timeout_s
        self._selected: asyncio.Future[Any] | None = None
        self._writing = asyncio.Lock()  # a settle's frames, or a commit: never interleaved
        self._batch: asyncio.Future[None] | None = None  # the commit the frames written so far wait for
        self._committer: asyncio.Task[None] | None = None

    async def commit(self, frames: Sequence[tuple[str, str, bytes, Any]], settle: SettleAction) -> None:
        if self._selected is None:
            self._selected = asyncio.ensure_future(self.channel.tx_select(timeout=self.timeout_s))
        await asyncio.shield(self._selected)
        async with self._writing:
            try:
                for exchange, routing_key, body, properties in frames:
                    await self.channel.basic_publish(
                        body, exchange=exchange, routing_key=routing_key, properties=properties
                    )
                await settle()
            except BaseException:
                # Part of this answer may be in the open transaction: never let a later commit
                # carry it. Closing the channel discards the transaction (and returns the
                # unacked deliveries, this one included).
                await self._close()
                raise
            batch = self._batch
            if batch is None:
                batch = self._batch = asyncio.get_running_loop().create_future()
            if self._committer is None or self._committer.done():
                self._committer = asyncio.create_task(self._commit_batches())
        await asyncio.shield(batch)

    async def _commit_batches(self) -> None:
        while self._batch is not None:
            async with self._writing:
                batch, self._batch = self._batch, None
                if batch is None:
                    return
                try:
                    await self.channel.tx_commit(timeout=self.timeout_s)
                except BaseException as exc:
                    batch.set_exception(exc)
                    batch.exception()  # retrieved: a settle cancelled meanwhile must not warn
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                else:
                    batch.set_result(None)

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await self.channel.close()
