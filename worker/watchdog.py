"""Every subscription that should consume does: a watchdog over FastStream's Rabbit subscribers.

aio-pika restores consumers after a reconnect and, in the version pinned here, after a
``basic.cancel`` from the broker (which RabbitMQ sends when a queue's node goes away or the
queue is deleted); older versions did not (aio-pika #334), FastStream lost consumers after a pod
replacement in a 3-replica cluster (faststream #2758), and a channel closed by a channel error
that its restore could not reopen stays closed. None of that is visible from outside: the worker
would look alive while it takes no command. So every ``interval_s`` the watchdog checks each
subscriber: started, its channel open, its consumer tag still known to the channel (aiormq drops
a tag when the broker cancels it). One that fails the check twice in a row while the broker
connection is up (a reconnect in progress gets the time aio-pika needs to restore it) is
re-created: its channel reopened if closed, then the subscriber stopped and started again.

``consuming`` and ``problems`` feed the readiness endpoint and the heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .background import Background

log = logging.getLogger("dockhand.watchdog")


class Subscriber(Protocol):
    """What the watchdog needs of a FastStream ``RabbitSubscriber``."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class SubscriptionState:
    """One subscriber's state: ``consuming``, or why not."""

    queue: str
    consuming: bool
    reason: str = ""


def subscription_state(subscriber: Any) -> SubscriptionState:
    """Inspect one ``RabbitSubscriber``. FastStream 0.7 keeps the queue object and consumer tag
    in ``_queue_obj`` / ``_consumer_tag``, aio-pika 10 a channel's aiormq channel in
    ``_channel.channel`` (its public ``channel`` property is deprecated, and ``get_underlay_channel``
    waits for a reconnect); tests/unit/test_connection.py pins all three."""
    queue = getattr(getattr(subscriber, "queue", None), "name", "?")
    queue_obj = getattr(subscriber, "_queue_obj", None)
    tag = getattr(subscriber, "_consumer_tag", None)
    if queue_obj is None or tag is None:
        return SubscriptionState(queue, False, "not started")
    channel = queue_obj.channel
    if channel.is_closed:
        return SubscriptionState(queue, False, "channel closed")
    underlay = getattr(channel, "_channel", None)  # None while aio-pika has no aiormq channel
    if underlay is None:
        return SubscriptionState(queue, False, "channel not open")
    if tag not in underlay.channel.consumers:
        return SubscriptionState(queue, False, "consumer cancelled by the broker")
    return SubscriptionState(queue, True)


class ConsumerWatchdog(Background):
    """Checks and re-creates subscriptions; see the module docstring.

    ``subscribers()`` gives the subscribers to watch, ``should_consume()`` whether they should
    consume now (a standby's do not), ``connected()`` whether the broker connection is up.
    ``lock`` is held while re-creating: whoever else starts or stops the subscribers (fail-over,
    drain) takes it too, so that the two never interleave.
    """

    def __init__(
        self,
        subscribers: Callable[[], Iterable[Any]],
        should_consume: Callable[[], bool],
        connected: Callable[[], bool],
        interval_s: float = 1.0,
        step_timeout_s: float = 10.0,
        lock: asyncio.Lock | None = None,
    ) -> None:
        super().__init__()
        self._subscribers = subscribers
        self._should_consume = should_consume
        self._connected = connected
        self.interval_s = interval_s
        self.step_timeout_s = step_timeout_s
        self.lock = lock or asyncio.Lock()
        self.recreated = 0
        self._suspect: set[int] = set()

    def states(self) -> list[SubscriptionState]:
        return [subscription_state(s) for s in self._subscribers()]

    @property
    def consuming(self) -> bool:
        """True when every subscription that should consume does (a standby: when it should not)."""
        if not self._should_consume():
            return False
        return all(state.consuming for state in self.states())

    def problems(self) -> list[str]:
        """``"<queue>: <reason>"`` for each subscription that should consume and does not."""
        if not self._should_consume():
            return []
        return [f"{s.queue}: {s.reason}" for s in self.states() if not s.consuming]

    def _jobs(self) -> list[Coroutine[Any, Any, None]]:
        return [self._run()]

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("consumer watchdog check failed")

    async def check(self) -> int:
        """One round: re-create what failed this check and the previous one; how many were."""
        if not self._should_consume() or not self._connected():
            self._suspect.clear()  # a reconnect or a stand-by is not a lost consumer
            return 0
        recreated = 0
        suspect: set[int] = set()
        for subscriber in list(self._subscribers()):
            state = subscription_state(subscriber)
            if state.consuming:
                continue
            if id(subscriber) not in self._suspect:
                suspect.add(id(subscriber))  # once may be a restore in progress: look again next round
                continue
            async with self.lock:
                # Re-checked under the lock: a fail-over or drain may have changed it meanwhile.
                if not self._should_consume() or subscription_state(subscriber).consuming:
                    continue
                log.warning("queue %s: %s; re-creating its consumer", state.queue, state.reason)
                if await self._recreate(subscriber):
                    recreated += 1
                else:
                    suspect.add(id(subscriber))
        self._suspect = suspect
        self.recreated += recreated
        return recreated

    async def _recreate(self, subscriber: Any) -> bool:
        queue_obj = getattr(subscriber, "_queue_obj", None)
        try:
            async with asyncio.timeout(self.step_timeout_s):
                channel = getattr(queue_obj, "channel", None)
                if channel is not None and channel.is_closed:
                    # FastStream caches the channel per configuration: a new subscriber start
                    # would get the same closed one back, so reopen it (aio-pika re-declares its
                    # queues and consumers on reopen).
                    with contextlib.suppress(Exception):
                        await channel.reopen()
                    if subscription_state(subscriber).consuming:
                        return True
                await subscriber.stop()
                await subscriber.start()
        except Exception as exc:
            log.warning("re-creating the consumer failed (%s: %s); retrying", type(exc).__name__, exc)
            return False
        state = subscription_state(subscriber)
        if state.consuming:
            log.info("queue %s: consuming again", state.queue)
        return state.consuming
