"""What feeds the dashboard's state from the bus, through one :class:`~dockhand.client.Client`.

- one subscription: heartbeats (health), every event family, and the results that did not
  succeed (``#.failed``, ``#.rejected``, ``#.expired`` on the results exchange);
- a :class:`~dockhand.client.DiscoveryView` for the services (it resyncs by itself);
- ``workspace.list`` per live host, every ``list_interval_s`` and soon after a workspace
  container is created, started or destroyed (debounced), so a new workspace shows within a
  second or so. Per host rather than one ``all.`` broadcast: a broadcast also lands in the queue
  of a host whose worker is gone and waits there until it comes back; a host that is silent is
  not asked;
- a watch on the connection: the page says "reconnecting" while the broker is away.

The dashboard's own commands carry the command id prefix ``dashboard-`` and are left out of
the feed. They count in the hosts' heartbeat counters like any other command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

from dockhand.amqp import error_reason
from dockhand.client import EVENT_FAMILIES, BrokerUnavailable, Client, DiscoveryView, DockhandError, Retry, bindings

from .state import FleetState

log = logging.getLogger("dockhand.dashboard")

COMMAND_PREFIX = "dashboard-"


class BusFeed:
    """Feeds ``state`` from ``client`` until cancelled (:meth:`run`)."""

    def __init__(
        self,
        client: Client,
        state: FleetState,
        *,
        list_interval_s: float = 15.0,
        debounce_s: float = 0.2,
        list_timeout_s: float = 10.0,
    ) -> None:
        self.client = client
        self.state = state
        self.list_interval_s = list_interval_s
        self.debounce_s = debounce_s
        self.list_timeout_s = list_timeout_s
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._everyone = True  # the next round lists every live host
        self.view: DiscoveryView | None = None

    async def run(self) -> None:
        """Follow the bus; returns only by cancellation (or a non-transient broker error)."""
        self.view = DiscoveryView(
            self.client, on_add=self._service, on_remove=self._service, on_update=self._service, list_timeout=2.0
        )
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._watch(), name="dashboard-watch")
            tasks.create_task(self._follow(), name="dashboard-follow")
            tasks.create_task(self._poll(), name="dashboard-poll")
            await self.view.start(ready_timeout=60.0)
            try:
                await asyncio.Future()  # until cancelled
            finally:
                await self.view.stop()

    # --- the subscription ----------------------------------------------------------------------

    async def _follow(self) -> None:
        pairs = [
            *bindings(None, [*EVENT_FAMILIES, "health"]),
            *(("results", f"#.{status}") for status in ("failed", "rejected", "expired")),
        ]
        prefix = self.client.prefix
        async for message in self.client.subscribe(pairs, on_connect=self._subscribed):
            try:
                body = json.loads(message.body)
            except ValueError:
                continue
            if not isinstance(body, dict):
                continue
            key = message.routing_key or ""
            exchange = message.exchange or ""
            if exchange == f"{prefix}.health":
                if self.state.heartbeat(body):  # heard for the first time, or again after silence
                    self._relist(str(body.get("host_id")))
            elif exchange == f"{prefix}.results":
                if not str(body.get("command_id", "")).startswith(COMMAND_PREFIX):
                    self.state.result(key, body)
            elif self.state.event(key, body):
                self._relist(str(body.get("host_id") or key.split(".", 1)[0]))

    async def _subscribed(self) -> None:
        """After each (re)subscription: what happened while unbound is unknown, so list everyone."""
        self.state.set_bus("connected", self.client.connected_url or "")
        self._everyone = True
        self._wake.set()

    def _service(self, change: Any) -> None:
        assert self.view is not None
        host = change.host_id
        services = [s.model_dump(mode="json") for (h, _), s in self.view.services.items() if h == host]
        self.state.services(host, services)

    # --- the connection ------------------------------------------------------------------------

    async def _watch(self) -> None:
        """``connected`` / ``reconnecting`` for the page: a channel of the client's connection
        closes when the connection is lost; asking for a new one reconnects."""
        while True:
            try:
                channel = await self.client.channel()
            except BrokerUnavailable as err:
                if not err.transient:
                    raise
                self.state.set_bus("reconnecting", str(err))
                await asyncio.sleep(1.0)
                continue
            except (ConnectionError, OSError) as err:
                self.state.set_bus("reconnecting", error_reason(err))
                await asyncio.sleep(1.0)
                continue
            closed = asyncio.Event()
            channel.close_callbacks.add(lambda *_, flag=closed: flag.set())
            self.state.set_bus("connected", self.client.connected_url or "")
            await closed.wait()
            self.state.set_bus("reconnecting", "lost the connection to RabbitMQ")
            await asyncio.sleep(0.5)

    # --- workspace lists -------------------------------------------------------------------------

    def _relist(self, host_id: str) -> None:
        self._dirty.add(host_id)
        self._wake.set()

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        last_round = loop.time()
        while True:
            # Woken early by events; the round of every live host still comes on time, however
            # busy some hosts are.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, last_round + self.list_interval_s - loop.time())):
                    await self._wake.wait()
            await asyncio.sleep(self.debounce_s)  # a create is followed by a start: one list for both
            self._wake.clear()
            woken, self._dirty = self._dirty, set()
            everyone = self._everyone or loop.time() - last_round >= self.list_interval_s
            self._everyone = False
            hosts = set(self.state.live_hosts()) | woken if everyone else woken
            if everyone:
                last_round = loop.time()
            if hosts:
                await asyncio.gather(*(self._list(h) for h in sorted(hosts)))

    async def _list(self, host_id: str) -> None:
        try:
            listed = await self.client.workspaces.list(
                host=host_id,
                command_id=f"{COMMAND_PREFIX}{uuid.uuid4().hex}",
                deadline=self.list_timeout_s,
                timeout=self.list_timeout_s,
                retry=Retry.off(self.list_timeout_s),
            )
        except DockhandError as err:
            log.info("dashboard: cannot list the workspaces of %s: %s", host_id, err)
            return
        self.state.workspaces(host_id, [ws.model_dump(mode="json") for ws in listed.workspaces])
