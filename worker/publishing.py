"""Publishing with publisher confirms: a publish returns only once the broker has the message."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import stamina
from faststream.rabbit import RabbitExchange

from dockhand.schemas import WireModel

log = logging.getLogger("dockhand.publish")

if TYPE_CHECKING:
    from faststream.rabbit import RabbitBroker


class Publisher:
    """Confirmed, retried publishing of wire models (results, events, heartbeats)."""

    def __init__(self, broker: RabbitBroker, *, attempts: int | None = None, timeout_s: float = 30.0) -> None:
        self.broker = broker
        self._attempts = attempts
        self._timeout_s = timeout_s

    async def confirmed(self, payload: bytes, **options: Any) -> None:
        """Publish and wait for the broker's confirm; retry a failed publish, with backoff, for up
        to ``timeout_s`` (a broker restart takes seconds: a count of quick attempts would not
        outlast it).

        ``mandatory=False``: an exchange with no bound queue is not an error.
        """
        attempts = self._attempts
        if not stamina.is_testing():  # the first attempt without the retry machinery: it usually succeeds
            try:
                await self.broker.publish(payload, mandatory=False, content_type="application/json", **options)
                return
            except Exception as exc:
                log.warning("publish failed (%s: %s); retrying", type(exc).__name__, exc)
            attempts = attempts - 1 if attempts is not None else None
        async for attempt in stamina.retry_context(on=Exception, attempts=attempts, timeout=self._timeout_s):
            with attempt:
                await self.broker.publish(payload, mandatory=False, content_type="application/json", **options)

    def to(self, exchange: RabbitExchange, *, message_type: str) -> Any:
        """A ``publish(routing_key, model)`` function for one exchange."""

        async def publish(routing_key: str, model: WireModel) -> None:
            await self.confirmed(
                model.model_dump_json().encode(),
                exchange=exchange,
                routing_key=routing_key,
                persist=True,
                message_type=message_type,
            )

        return publish
