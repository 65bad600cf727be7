"""Settling a delivered message once its command is answered.

The result is published with publisher confirms (to the results exchange and to the sender's
``reply_to``), and only then is the message acked — or rejected into the dead-letter queue
when the command was never valid, as a redacted copy when it carries a secret. When the result
cannot be published the message is requeued instead: its redelivery is answered from the
result store, so nothing runs twice.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from dockhand.schemas import Result, Status, utcnow

from .errors import DockhandError
from .intake import REDACTED_HEADER, printable, redact
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
    """Give a message back to its queue; a channel already gone returns it anyway."""
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
        """Publish the result (confirmed), then ack — or dead-letter it. ``key``: the store
        entry this result is (to mark published); None for results that are not stored.
        ``payload``: the result's JSON, when the caller has it already. ``results_sent``: it
        is on the results exchange already (a crash came before its reply): the reply only."""
        # The result is in the journal before anyone can see it (a crash after the publish
        # must find it there), and marked published before the ack (see store.py).
        await self.store.durable()
        try:
            await self.publish_result(result, message, payload, key=key, results_sent=results_sent)
        except Exception:
            # Still failing after the retries: requeue it rather than ack it unanswered. The
            # redelivery is answered from the store (nothing runs twice); if publishing keeps
            # failing, the delivery limit dead-letters it.
            log.exception("could not publish the result of %s; requeueing the command", printable(result.command_id))
            await requeue(message)
            return
        if key is not None:
            self.store.mark_published(key)
            await self.store.durable()
        self.counters.by_status[result.status] += 1
        if settle == "reject":
            await self.dead_letter(message)
        else:
            await message.ack()

    async def dead_letter(self, message: RabbitMessage) -> None:
        """Reject a message into the dead-letter queue — unless it carries a secret: then a
        redacted copy goes to the dead-letter exchange (confirmed) and the original is acked."""
        raw = message.raw_message
        redaction = redact(message.body, self.settings.body_limit)
        if redaction is None:
            await message.reject(requeue=False)
            return
        body, redacted = redaction
        headers: dict[str, Any] = dict(raw.headers or {})
        headers[REDACTED_HEADER] = ",".join(redacted)
        headers.setdefault("x-dockhand-dead-lettered-by", self.worker_id)
        if raw.user_id:
            # Not as user_id: the broker checks that property against our own connection's user.
            headers.setdefault("x-dockhand-original-user-id", raw.user_id)
        try:
            await self.publisher.confirmed(
                body,
                exchange=self.topology.dead,
                routing_key=raw.routing_key or "",
                persist=True,
                headers=headers,
                **_properties(message),
            )
        except Exception:
            # Never reject the original (it would keep the secret): requeue it and try again.
            log.exception("could not dead-letter a redacted copy of %s; requeueing it", printable(raw.message_id))
            await requeue(message)
            return
        log.info("dead-lettered a redacted copy of message %s (%s)", printable(raw.message_id), ", ".join(redacted))
        await message.ack()

    async def publish_result(
        self,
        result: Result,
        message: RabbitMessage,
        payload: bytes | None = None,
        *,
        key: str | None = None,
        results_sent: bool = False,
    ) -> None:
        """Publish ``result`` (confirmed) to the results exchange, then to ``reply_to`` if set.

        With a store ``key``, the results exchange's confirm is noted before the reply goes
        out: a worker killed between the two then sends only the reply again, not a second
        copy to every results consumer.
        """
        if payload is None:
            payload = result.model_dump_json().encode()
        raw = message.raw_message
        common: dict[str, Any] = {"correlation_id": raw.correlation_id, "message_type": "dockhand.result"}
        if not results_sent:
            await self.publisher.confirmed(
                payload,
                exchange=self.topology.results,
                routing_key=self.topology.result_key(result.type, result.status.value),
                persist=True,
                **common,
            )
            if key is not None and raw.reply_to:
                self.store.mark_results_sent(key)
        if raw.reply_to:
            await self.publisher.confirmed(payload, routing_key=raw.reply_to, **common)


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
