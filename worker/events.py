"""The Docker event pipeline: ``/events`` → bounded queue → events exchange and discovery.

Docker drops a listener that does not drain its stream quickly, so the reader only parses and
enqueues; a separate processor publishes. The stream is opened *before* any list (a marker in
the queue tells the processor to reconcile once the subscription is live), resumed with
``since`` after a drop (the boundary event comes back and is deduplicated), and every
reconnect, queue overflow and period ends in a full reconcile and a discovery snapshot — the
worker cannot prove that no event was missed across a gap, and the daemon's 256-event buffer
does not survive a daemon restart.

An event older than the list of the last reconcile (Docker replays its buffer after a reconnect,
including the die/start of its own restore) is still published, marked ``replayed: true``, but
its consequence for discovery is decided from the container's current state, not from the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp

from dockhand.schemas import ContainerEvent, NetworkEvent
from dockhand.schemas.events import ContainerRef, NetworkRef

from .background import Background
from .discovery import Discovery
from .docker import DockerOps
from .publishing import Publish
from .settings import Settings

log = logging.getLogger("dockhand.events")

CONTAINER_ACTIONS = frozenset(
    {"create", "start", "stop", "die", "kill", "oom", "restart", "pause", "unpause", "destroy", "rename"}
)
PUBLISHED_CONTAINER_ACTIONS = CONTAINER_ACTIONS - {"rename"}
HEALTH_ACTIONS = frozenset({"health_status: healthy", "health_status: unhealthy"})
NETWORK_ACTIONS = frozenset({"create", "destroy", "connect", "disconnect"})
_NOT_LABELS = frozenset({"name", "image", "exitCode", "signal", "execDuration"})
_EVENT_ID_NAMESPACE = uuid.UUID("6f0b7c1e-3f64-4c1c-9c53-8a3a5f2f1d10")


@dataclass
class Reconcile:
    """Queue marker: list everything now (after the events queued before it)."""

    reason: Literal["startup", "resync", "periodic"]


@dataclass
class StreamState:
    """What health heartbeats report about the event stream."""

    connected: bool = False
    last_event_at: datetime | None = None
    lag_ms: float | None = None
    # Events handed to the broker in order (the events pipeline confirms them, or resends them,
    # or leaves a gap and asks for a resync: see EventPipeline).
    published: int = 0
    reconnects: int = 0
    dropped: int = 0
    # Called when ``connected`` flips (health publishes a heartbeat on a status change at once).
    listeners: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def set_connected(self, connected: bool) -> None:
        changed = connected != self.connected
        self.connected = connected
        if changed:
            for listener in self.listeners:
                listener()


def _since(time_nano: int) -> str:
    return f"{time_nano // 1_000_000_000}.{time_nano % 1_000_000_000:09d}"


def _event_key(event: dict[str, Any]) -> tuple[Any, ...]:
    actor = event.get("Actor") or {}
    return (event.get("timeNano"), event.get("Type"), event.get("Action"), actor.get("ID"))


class EventStream(Background):
    """Reads Docker events, publishes them, and keeps :class:`Discovery` current."""

    def __init__(self, ops: DockerOps, settings: Settings, discovery: Discovery, publish: Publish) -> None:
        super().__init__()
        self.ops = ops
        self.settings = settings
        self.discovery = discovery
        self._publish = publish
        self.state = StreamState()
        self.queue: asyncio.Queue[tuple[dict[str, Any], float] | Reconcile] = asyncio.Queue(settings.event_queue_size)
        self._last_time_nano: int | None = None
        self._recent: deque[tuple[Any, ...]] = deque(maxlen=1024)
        self._recent_set: set[tuple[Any, ...]] = set()
        self._overflowed = False
        self._workspaces: dict[str, str] = {}
        self._ever_connected = False
        self._just_connected = False
        self.ready = asyncio.Event()
        # Set when Docker is seen answering again: a reader backing off reconnects at once.
        self._wake = asyncio.Event()
        ops.on_availability(lambda available: self._wake.set() if available else None)

    # --- lifecycle ----------------------------------------------------------------------------

    def _jobs(self) -> list[Coroutine[Any, Any, None]]:
        return [self._read_forever(), self._process_forever()]

    async def stop(self) -> None:
        """Stop reading and processing; a later start begins with a reconcile."""
        await super().stop()
        self.state.set_connected(False)
        # A later start (re-elected leader) begins with a reconcile, not with stale events.
        while not self.queue.empty():
            self.queue.get_nowait()

    # --- reader: never waits on the broker ------------------------------------------------------

    async def _read_forever(self) -> None:
        failures = 0
        while True:
            self._just_connected = False
            self._wake.clear()
            try:
                await self._read_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._just_connected or failures == 0:
                    log.warning("docker event stream lost: %s: %s; reconnecting", type(exc).__name__, exc)
            self.state.set_connected(False)
            # Back off only while connecting fails; a stream that was up retries at once, and so
            # does one whose daemon was just seen answering again (a probe, any call).
            failures = 0 if self._just_connected else failures + 1
            delay = min(0.05 * 2**failures, self.settings.event_reconnect_max_s)
            # asyncio.timeout, not wait_for, which on 3.11 can swallow stop()'s cancel.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay * random.uniform(0.5, 1.0)):  # noqa: S311 - jitter, not crypto
                    await self._wake.wait()

    async def _read_once(self) -> None:
        # Image events only keep the image cache current (worker/docker/images.py); not published.
        params: dict[str, Any] = {"filters": json.dumps({"type": ["container", "network", "image"]})}
        if self._last_time_nano is not None:
            params["since"] = _since(self._last_time_nano)
        docker = self.ops.docker
        # aiodocker's own subscription hands events to an unbounded queue and never reconnects;
        # reading the stream here keeps the bound, the reconnect and the timing in one place.
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None, connect=10)
        async with docker._query("events", method="GET", params=params, timeout=timeout) as response:
            # aiodocker's _query never releases the response: close it here, or the dead
            # stream's connection lingers until the garbage collector complains.
            try:
                self._just_connected = True
                self.ops.mark_available()  # a live stream is proof enough; don't wait for the next probe
                self.state.set_connected(True)
                self.ops.watch(True)  # event-fed caches start empty, and are used from now on
                if self._ever_connected:
                    self.state.reconnects += 1
                    log.info(
                        "docker event stream reconnected (since %s)",
                        params.get("since", "now"),
                        extra={"connected_at": time.time()},
                    )
                self._enqueue(Reconcile("resync" if self._ever_connected else "startup"))
                self._ever_connected = True
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    self.ops.saw(event)  # caches hear of a change at once, not after the queue
                    if event.get("Type") == "image":
                        continue  # for the image cache only: never published
                    key = _event_key(event)
                    if key in self._recent_set:
                        continue  # the boundary event of a resumed stream
                    self._remember(key)
                    self._last_time_nano = int(event.get("timeNano") or self._last_time_nano or 0)
                    self._enqueue((event, time.time()))
            finally:
                self.ops.watch(False)  # a gap: caches are not used until the next connect
                response.close()
        raise ConnectionError("stream ended")

    def _remember(self, key: tuple[Any, ...]) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(key)
        self._recent_set.add(key)

    def request_resync(self, _lost: int = 0) -> None:
        """Reconcile soon (after the events queued now): messages were lost for good (an
        :class:`~.publishing.EventPipeline` listener), so a snapshot must follow the gap."""
        self._enqueue(Reconcile("resync"))

    def _enqueue(self, item: tuple[dict[str, Any], float] | Reconcile) -> None:
        if self._overflowed:
            # Events were dropped: the next thing the processor does is a full reconcile.
            try:
                self.queue.put_nowait(Reconcile("resync"))
                self._overflowed = False
            except asyncio.QueueFull:
                self.state.dropped += 1
                return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.state.dropped += 1
            if not self._overflowed:
                log.warning("event queue full (%d): dropping events until a resync", self.queue.maxsize)
            self._overflowed = True

    # --- processor ------------------------------------------------------------------------------

    async def _process_forever(self) -> None:
        interval = self.settings.reconcile_interval_s
        next_periodic = time.monotonic() + interval
        while True:
            try:
                async with asyncio.timeout(max(0.0, next_periodic - time.monotonic())):
                    item = await self.queue.get()
            except TimeoutError:
                item = Reconcile("periodic")
            try:
                if isinstance(item, Reconcile):
                    await self._reconcile(item.reason)
                    next_periodic = time.monotonic() + interval
                    self.ready.set()
                else:
                    await self._handle(*item)
            except asyncio.CancelledError:
                raise
            except Exception:
                # One bad event (or a failed publish) must not stop the pipeline; the next
                # reconcile repairs discovery state.
                log.exception("event processing failed")
                if not isinstance(item, Reconcile):
                    # Repair now, not at the next event: a reconcile retries until it works.
                    self._enqueue(Reconcile("resync"))

    async def _reconcile(self, reason: Literal["startup", "resync", "periodic"]) -> None:
        """A full reconcile is never skipped: it is how a gap is repaired. Retry until it works
        (events queue up meanwhile; an overflow only asks for another reconcile)."""
        delay = 0.2
        while True:
            try:
                await self._load_workspaces()
                await self.discovery.reconcile(reason)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("discovery %s failed (%s); retrying in %.1f s", reason, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.event_reconnect_max_s)

    async def _load_workspaces(self) -> None:
        """Container → workspace id of this host's managed containers, so network events carry
        the workspace even for containers that have sent no event since the worker started."""
        names = self.ops.labels
        filters = json.dumps({"label": [f"{names.managed}=true", f"{names.host}={self.ops.host_id}"]})

        async def fetch() -> dict[str, str]:
            containers = await self.ops.docker.containers.list(all=True, filters=filters)
            return {c["Id"]: (c["Labels"] or {}).get(names.workspace_id, "") for c in containers}

        self._workspaces = await self.ops.call("container.list", fetch, subject=f"workspaces on {self.ops.host_id}")
        self.ops.census.replace({w for w in self._workspaces.values() if w})

    async def _handle(self, event: dict[str, Any], received: float) -> None:
        kind = event.get("Type")
        action: str = event.get("Action") or ""
        actor = event.get("Actor") or {}
        attributes: dict[str, str] = actor.get("Attributes") or {}
        time_nano = int(event.get("timeNano") or 0)
        when = datetime.fromtimestamp(time_nano / 1e9, UTC)
        self.state.last_event_at = when
        self.state.lag_ms = round((received - time_nano / 1e9) * 1000, 3)
        # Older than the last reconcile's list: that list (and its snapshot) already shows it.
        replayed = self.discovery.predates_list(time_nano)
        if kind == "container":
            container_id = actor.get("ID") or event.get("id") or ""
            # The inspect a new service needs starts first (latency), but the event is queued
            # for publishing first: consumers see cause, then effect (the events pipeline writes
            # in that order and does not wait for the start's confirm before the added).
            inspected = None
            if self.discovery.wants_inspect(action, attributes):
                inspected = asyncio.ensure_future(self.discovery.inspect(container_id))
            try:
                if action in PUBLISHED_CONTAINER_ACTIONS or action in HEALTH_ACTIONS:
                    await self._publish_container(event, action, container_id, attributes, when, replayed)
                await self.discovery.on_container_event(
                    action, container_id, attributes, inspected, time_nano=time_nano
                )
            finally:
                if inspected is not None and not inspected.done():
                    inspected.cancel()
        elif kind == "network" and action in NETWORK_ACTIONS:
            container_id = attributes.get("container")
            await self._publish_network(event, action, attributes, when, replayed)
            await self.discovery.on_network_event(action, container_id, time_nano=time_nano)

    async def _publish_container(
        self,
        event: dict[str, Any],
        action: str,
        container_id: str,
        attributes: dict[str, str],
        when: datetime,
        replayed: bool = False,
    ) -> None:
        labels = {k: v for k, v in attributes.items() if k not in _NOT_LABELS}
        names = self.ops.labels
        workspace_id = None
        if names.is_managed_by(labels, self.ops.host_id):
            workspace_id = labels.get(names.workspace_id)
            if workspace_id:
                self._workspaces[container_id] = workspace_id
                self.ops.census.add(workspace_id)
        if action == "destroy":
            gone = self._workspaces.pop(container_id, None)
            if gone:
                self.ops.census.discard(gone)
        name = action.replace("health_status: ", "health.")
        extra: dict[str, Any] = {}
        if "exitCode" in attributes:
            extra["exit_code"] = int(attributes["exitCode"])
        if "signal" in attributes:
            extra["signal"] = attributes["signal"]
        if replayed:
            extra["replayed"] = True
        message = ContainerEvent(
            event_id=str(uuid.uuid5(_EVENT_ID_NAMESPACE, repr(_event_key(event)))),
            host_id=self.ops.host_id,
            type=f"container.{name}",
            time=when,
            container=ContainerRef(
                id=container_id,
                name=attributes.get("name"),
                image=attributes.get("image"),
                labels=labels,
                workspace_id=workspace_id,
            ),
            attributes=extra,
        )
        await self._publish(f"{self.ops.host_id}.container.{name}", message)
        self.state.published += 1

    async def _publish_network(
        self, event: dict[str, Any], action: str, attributes: dict[str, str], when: datetime, replayed: bool = False
    ) -> None:
        actor = event.get("Actor") or {}
        container_id = attributes.get("container")
        message = NetworkEvent(
            event_id=str(uuid.uuid5(_EVENT_ID_NAMESPACE, repr(_event_key(event)))),
            host_id=self.ops.host_id,
            type=f"network.{action}",
            time=when,
            network=NetworkRef(id=actor.get("ID") or "", name=attributes.get("name"), type=attributes.get("type")),
            container_id=container_id,
            workspace_id=self._workspaces.get(container_id or ""),
            attributes={"replayed": True} if replayed else {},
        )
        await self._publish(f"{self.ops.host_id}.network.{action}", message)
        self.state.published += 1
