"""Delivery order: per-key lanes, and the broker's order restored from delivery tags.

aio-pika hands each delivery to FastStream as its own task, and under load those tasks reach
the handler out of order. :class:`DeliveryOrder` puts them back in broker order before a
message enters its :class:`Lanes` lane (one per workspace), where it runs after the commands
before it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("dockhand.commands")


class Lanes:
    """Runs jobs with the same key one after another, in submission order; jobs without a
    key, or with different keys, run concurrently."""

    def __init__(self) -> None:
        self._tails: dict[str, asyncio.Task[None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(
        self, key: str | None, job: Callable[[], Awaitable[None]], context: contextvars.Context | None = None
    ) -> asyncio.Task[None]:
        before = self._tails.get(key) if key is not None else None

        async def run() -> None:
            if before is not None:
                # Wait for the predecessor however it ended; its failure is its own.
                await asyncio.wait([before])
            await job()

        task = asyncio.get_running_loop().create_task(run(), context=context)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if key is not None:
            self._tails[key] = task
            task.add_done_callback(lambda t: self._tails.pop(key) if self._tails.get(key) is t else None)
        return task


class DeliveryOrder:
    """Releases deliveries in broker order: delivery tags count 1, 2, 3, … per channel, so a
    message that arrives early is held until the ones before it have arrived.

    A delivery that never reaches the handler (FastStream failed before it) would stall its
    channel; after ``gap_timeout_s`` the held messages are released anyway, in tag order.
    """

    def __init__(self, gap_timeout_s: float = 2.0) -> None:
        self._gap_timeout_s = gap_timeout_s
        self._next: dict[int, int] = {}
        self._held: dict[int, dict[int, Callable[[], None]]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def admit(self, channel: object, tag: int | None, release: Callable[[], None]) -> None:
        if tag is None:  # not from a broker delivery (tests): nothing to order by
            release()
            return
        key = id(channel)
        if key not in self._next:
            # A new channel (first start or a reconnect): its tags start again at 1.
            self._forget_closed()
            self._next[key] = 1
        if tag < self._next[key]:
            release()  # released already by a gap timeout: late, but never dropped
            return
        held = self._held.setdefault(key, {})
        held[tag] = release
        self._drain(key)

    def _drain(self, key: int) -> None:
        held = self._held[key]
        expected = self._next[key]
        while expected in held:
            held.pop(expected)()
            expected += 1
        self._next[key] = expected
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if held:
            self._timers[key] = asyncio.get_running_loop().call_later(self._gap_timeout_s, self._skip_gap, key)

    def _skip_gap(self, key: int) -> None:
        self._timers.pop(key, None)
        held = self._held.get(key)
        if held:
            log.warning("delivery %d never reached the handler; releasing the %d after it", self._next[key], len(held))
            self._next[key] = min(held)
            self._drain(key)

    def _forget_closed(self) -> None:
        # Keep the bookkeeping of a handful of channels; old ones have nothing held.
        for key in [k for k in self._next if not self._held.get(k)][:-8]:
            self._next.pop(key, None)
            self._held.pop(key, None)
