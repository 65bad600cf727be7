"""Settling a delivered message once its command is answered.

The result is published with a publisher confirm to the results exchange; then the reply to the
sender's ``reply_to`` and the ack — or the reject into the dead-letter queue when the command was
never valid, as a redacted copy when it carries a secret — commit in one AMQP transaction on the
message's channel (:mod:`.answers`), so a worker killed at any moment sends the reply once. A
command redelivered after a crash is answered from the result store; the journal notes the
results exchange's confirm, so such a redelivery sends the reply alone. When the answer cannot be
published the message goes back to its queue: nothing runs twice.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from dockhand.schemas import Result, Status, utcnow

from .answers import Outgoing, SettleAction, Transactions
from .errors import DockhandError
from .intake import REDACTED_HEADER, printable, redact
from .publishing import DEFAULT_EXCHANGE
from .store import ResultStore

if TYPE_CHECKING:
    from faststream.rabbit import RabbitMessage

    from .publishing import Publisher
    from .settings import Settings
    from .topology import Topology

log = logging.getLogger("dockhand.commands")

Settle = Literal["ack", "reject"]
"""How a message ends once its result is confirmed: acked, or rejected to the dead letters."""


def settle_for(status: Status) -> Settle:
    """A rejected command (never valid) is dead-lettered; every other outcome is acked."""
    return "reject" if status is Status.REJECTED else "ack"


class Counters:
    """Outcome counts for health heartbeats."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.by_status: dict[Status, int] = dict.fromkeys(Status, 0)


def attempt_of(message: RabbitMessage) -> int:
    """Which delivery of its command ``message`` is (1: the first), from the quorum queue's count."""
    headers = message.raw_message.headers or {}
    count = headers.get("x-delivery-count")
    if isinstance(count, int):
        return count + 1
    return 2 if message.raw_message.redelivered else 1


async def requeue(message: RabbitMessage) -> None:
    """Give a message back to its queue with a bare nack (for a message whose channel is not in
    transaction mode: see :meth:`Settler.settle`); a channel already gone returns it anyway."""
    with contextlib.suppress(Exception):
        await message.nack(requeue=True)


@dataclass(slots=True)
class Settler:
    """Publishes results (confirmed) and settles their messages: ack, dead letter or requeue."""

    settings: Settings
    topology: Topology
    publisher: Publisher
    store: ResultStore
    counters: Counters
    worker_id: str
    transactions: Transactions

    def unrun(
        self, command_id: str, command_type: str, error: DockhandError, started: datetime, message: RabbitMessage
    ) -> Result:
        """The result of a command answered without running it."""
        now = utcnow()
        return Result(
            command_id=command_id,
            type=command_type,
            status=error.status,
            host_id=self.settings.host_id,
            worker_id=self.worker_id,
            error=error.info(),
            started_at=started,
            finished_at=now,
            duration_ms=round((now - started).total_seconds() * 1000, 3),
            attempt=attempt_of(message),
        )

    async def finish(
        self,
        result: Result,
        message: RabbitMessage,
        *,
        settle: Settle,
        key: str | None = None,
        payload: bytes | None = None,
        results_sent: bool = False,
    ) -> None:
        """Publish the result to the results exchange (confirmed), then send the reply and ack —
        or dead-letter — in one transaction. ``key``: the store entry this result is (to mark);
        None for results that are not stored. ``payload``: the result's JSON, when the caller
        has it already. ``results_sent``: it is on the results exchange already (a crash came
        before its reply): the reply only."""
        # The result is in the journal before anyone can see it: a crash after any publish
        # finds it there, and the redelivery is answered from it (nothing runs twice).
        await self.store.durable()
        if payload is None:
            payload = result.model_dump_json().encode()
        raw = message.raw_message
        common: dict[str, Any] = {"correlation_id": raw.correlation_id, "message_type": "dockhand.result"}
        outgoing: list[Outgoing] = []
        if raw.reply_to:
            outgoing.append(Outgoing(payload, DEFAULT_EXCHANGE, raw.reply_to, common))
        action: SettleAction = message.ack
        if settle == "reject":
            copies, action = self._dead_letter(message)
            outgoing += copies
        try:
            if not results_sent:
                # With a confirm, not in the transaction: a results queue that refuses it (say,
                # full with reject-publish) nacks a confirmed publish, which is then retried;
                # in a transaction RabbitMQ would drop it for that queue without a word.
                await self.publisher.confirmed(
                    payload,
                    exchange=self.topology.results,
                    routing_key=self.topology.result_key(result.type, result.status.value),
                    persist=True,
                    **common,
                )
                if key is not None and outgoing:
                    # Noted before the reply: a worker killed now sends the reply alone again.
                    self.store.mark_results_sent(key)
            await self.transactions.commit(message, outgoing, action)
        except Exception:
            # The reply and the settle did not take effect: the channel is gone (the broker
            # gives the delivery back) or, for a message without one, it is requeued. The
            # redelivery is answered from the store, and the delivery limit dead-letters a
            # message whose answer keeps failing.
            log.exception("could not publish the result of %s; requeueing the command", printable(result.command_id))
            await self.settle(message, "requeue")
            return
        if key is not None:
            self.store.mark_published(key)
        self.counters.by_status[result.status] += 1

    async def settle(self, message: RabbitMessage, how: Literal["ack", "requeue"]) -> None:
        """Ack or requeue ``message`` without an answer (in its channel's transaction); a failure
        leaves it to the broker, which returns it when the channel closes."""
        action = message.ack if how == "ack" else partial(message.nack, requeue=True)
        try:
            await self.transactions.commit(message, (), action)
        except Exception as exc:
            # Its channel is closed now (a failed transaction closes it): the broker gives the
            # delivery back. A message without a channel is given back here.
            log.warning("could not %s message %s (%s)", how, printable(message.raw_message.message_id), exc)
            if message.raw_message.channel is None:
                await requeue(message)

    async def dead_letter(self, message: RabbitMessage) -> None:
        """Send a message with no answer to the dead letters (see :meth:`_dead_letter`)."""
        copies, settle = self._dead_letter(message)
        try:
            await self.transactions.commit(message, copies, settle)
        except Exception:
            # Never reject the original of a redacted copy (it would keep the secret): requeue.
            log.exception("could not dead-letter message %s; requeueing it", printable(message.raw_message.message_id))
            await self.settle(message, "requeue")

    def _dead_letter(self, message: RabbitMessage) -> tuple[list[Outgoing], SettleAction]:
        """How a message goes to the dead letters: rejected as it came — or, when it carries a
        secret, a redacted copy published to the dead-letter exchange and the original acked
        (both in the answer's transaction)."""
        redaction = redact(message.body, self.settings.body_limit)
        if redaction is None:
            return [], partial(message.reject, requeue=False)
        raw = message.raw_message
        body, redacted = redaction
        headers: dict[str, Any] = dict(raw.headers or {})
        headers[REDACTED_HEADER] = ",".join(redacted)
        headers.setdefault("x-dockhand-dead-lettered-by", self.worker_id)
        if raw.user_id:
            # Not as user_id: the broker checks that property against our own connection's user.
            headers.setdefault("x-dockhand-original-user-id", raw.user_id)
        log.info("dead-lettering a redacted copy of message %s (%s)", printable(raw.message_id), ", ".join(redacted))
        options: dict[str, Any] = {"persist": True, "headers": headers, **_properties(message)}
        return [Outgoing(body, self.topology.dead, raw.routing_key or "", options)], message.ack


def _properties(message: RabbitMessage) -> dict[str, Any]:
    """The properties a redacted dead letter keeps from its original (those that are set)."""
    raw = message.raw_message
    return {
        name: value
        for name, value in {
            "message_id": raw.message_id,
            "correlation_id": raw.correlation_id,
            "reply_to": raw.reply_to,
            "message_type": raw.type,
            "timestamp": raw.timestamp,
        }.items()
        if value is not None
    }
