"""Which worker of a host publishes its events: a leader lock held in RabbitMQ itself.

Commands already go to one worker per host (single active consumer), but every replica sees
the same Docker events; if each published them, consumers would see every ``added`` once per
replica. The lock is an exclusive queue ``<prefix>.leader.<host_id>``: RabbitMQ lets one
connection hold it and deletes it when that connection dies, so a standby takes over within
about a second of the leader's death. A leader that merely lost the broker keeps its event
stream running (events buffer meanwhile) and takes the lock back on reconnect — unless a
standby got there first, in which case it stands down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from aiormq.exceptions import ChannelAccessRefused, ChannelLockedResource

from .background import Background
from .connection import NodeCycle, connect_any

log = logging.getLogger("dockhand.leadership")


class Leadership(Background):
    """Campaigns for the host's leader lock; calls ``on_elected``/``on_demoted`` on changes."""

    def __init__(
        self,
        amqp_url: str | Sequence[str],
        lock_name: str,
        on_elected: Callable[[], Awaitable[None]],
        on_demoted: Callable[[], Awaitable[None]],
        retry_s: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__()
        # The lock's own connection follows the cluster's node list like the broker's does
        # (worker/connection.py); any node will do, as the lock queue lives where it is declared.
        self._nodes = NodeCycle(amqp_url)
        self._ssl_context = ssl_context  # the broker's own (worker/tls.py), for amqps://
        self._lock_name = lock_name
        self._on_elected = on_elected
        self._on_demoted = on_demoted
        self._retry_s = retry_s
        self.leader = False
        self._told_refused = False

    def _jobs(self) -> list[Coroutine[Any, Any, None]]:
        return [self._campaign()]

    async def stop(self) -> None:
        """Give up the campaign (and the lock, with its connection); demote if leading."""
        await super().stop()
        if self.leader:
            self.leader = False
            await self._on_demoted()

    async def _campaign(self) -> None:
        while True:
            try:
                connection = await connect_any(self._nodes, ssl_context=self._ssl_context)
            except Exception as exc:
                log.debug("leader lock: broker unreachable (%s)", exc)
                await asyncio.sleep(self._retry_s)
                continue
            lost = asyncio.Event()
            connection.close_callbacks.add(lambda *_, event=lost: event.set())
            try:
                channel = await connection.channel()
                await channel.declare_queue(self._lock_name, exclusive=True, auto_delete=True)
            except (ChannelLockedResource, ChannelAccessRefused) as exc:
                # Someone else holds it: stand by (and stand down if we thought we led).
                if "refused for user" in str(exc) and not self._told_refused:
                    # Not a rival but our broker user's permissions: this worker would stand by
                    # for ever, so say so (README: broker users, the worker's configure regex).
                    log.warning("leader lock %s: the broker user may not declare it (%s)", self._lock_name, exc)
                    self._told_refused = True
                await self._set(False)
                with contextlib.suppress(Exception):
                    await connection.close()
                await asyncio.sleep(self._retry_s)
                continue
            except Exception as exc:
                log.debug("leader lock: %s", exc)
                with contextlib.suppress(Exception):
                    await connection.close()
                await asyncio.sleep(self._retry_s)
                continue
            try:
                await self._set(True)
                await lost.wait()
                self._nodes.failed(None)  # the next attempt starts at another node
                log.warning("leader lock: connection lost; keeping the event stream until it is back")
            finally:
                with contextlib.suppress(Exception):
                    await connection.close()
            await asyncio.sleep(self._retry_s)

    async def _set(self, leader: bool) -> None:
        if leader == self.leader:
            return
        self.leader = leader
        if leader:
            log.info("leader lock %s taken: this worker publishes the host's events", self._lock_name)
            await self._on_elected()
        else:
            log.info("leader lock %s held by another worker: standing by", self._lock_name)
            await self._on_demoted()
