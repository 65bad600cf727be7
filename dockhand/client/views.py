"""Live state built from the bus: the fleet's discovered services and its hosts.

:class:`DiscoveryView` is what a proxy or tunnel agent needs: the current services of the fleet
(or of chosen hosts) from ``discovery.list`` plus the deltas and snapshots that follow, kept
right by itself. It subscribes *before* it lists, so nothing falls between the two; a delta
that predates the list is applied on top of it, which is harmless (each delta sets or clears one
service, and any later change to it comes after it). A gap in a host's discovery ``seq``, a new
``epoch`` (another worker took over), a host seen for the first time, or a reconnect makes it
list that host again: it converges without help after lost messages.

:class:`HostsView` follows heartbeats: which hosts are up, their role and status, last seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from dockhand.schemas import DiscoveryEvent, DiscoverySnapshot, Heartbeat, Service

from ._events import bindings, parse_event
from .errors import DockhandError

if TYPE_CHECKING:
    from ._client import Client

log = logging.getLogger("dockhand.client.views")

ChangeKind = Literal["added", "removed", "updated"]


@dataclass(frozen=True)
class ServiceChange:
    """One change of the view: a service ``added``, ``removed`` or ``updated`` on ``host_id``."""

    kind: ChangeKind
    host_id: str
    service: Service


Callback = Callable[[ServiceChange], Awaitable[None] | None]


@dataclass
class _Track:
    """What the view knows of one host's discovery stream."""

    epoch: str | None = None
    seq: int | None = None
    services: dict[str, Service] = field(default_factory=dict)  # by container id
    stale: bool = False
    """The last list of this host failed: its next message lists it again."""


class _View:
    """A background task fed by one subscription, started and stopped by ``async with``."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, ready_timeout: float = 30.0) -> None:
        """Start following; returns once the view holds its first state."""
        self._task = asyncio.create_task(self._run(), name=type(self).__name__)
        ready = asyncio.ensure_future(self._ready.wait())
        done, _ = await asyncio.wait((ready, self._task), timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            ready.cancel()
            self._task.result()  # raises what ended it
        if ready not in done:
            ready.cancel()
            raise DockhandError(f"{type(self).__name__} had no state within {ready_timeout:g} s")

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        raise NotImplementedError


class DiscoveryView(_View):
    """The discovered services of the fleet (or of ``hosts``), kept current.

    ::

        async with DiscoveryView(dh, on_add=add_route, on_remove=drop_route) as view:
            print(view.domains())            # {"app.example.com": [Service, ...]}
            async for change in view.changes():
                ...

    Callbacks (plain or async functions of a :class:`ServiceChange`) run in order, one at a time.
    Without ``hosts``, start-up asks every host and waits ``list_timeout`` seconds for answers;
    hosts that answer later are listed when their first message arrives.

    A ``discovery.list`` answer carries no ``seq``: the first message after a list sets the
    baseline, so messages lost between a list and that message show only at a new epoch or at
    the worker's next snapshot (``DOCKHAND_RECONCILE_INTERVAL_S``).
    """

    def __init__(
        self,
        client: Client,
        *,
        hosts: Iterable[str] | None = None,
        on_add: Callback | None = None,
        on_remove: Callback | None = None,
        on_update: Callback | None = None,
        list_timeout: float = 2.0,
    ) -> None:
        super().__init__(client)
        self.hosts = list(hosts) if hosts is not None else None
        self._callbacks: dict[ChangeKind, Callback | None] = {
            "added": on_add,
            "removed": on_remove,
            "updated": on_update,
        }
        self.list_timeout = list_timeout
        self._tracks: dict[str, _Track] = {}
        self._listeners: list[asyncio.Queue[ServiceChange]] = []
        self.resyncs = 0
        """How many times a host was listed again (a gap, a new epoch, a reconnect)."""

    # --- reading -----------------------------------------------------------------------------

    @property
    def services(self) -> dict[tuple[str, str], Service]:
        """Every service, by (host id, container id)."""
        return {(host, cid): s for host, track in self._tracks.items() for cid, s in track.services.items()}

    def domains(self) -> dict[str, list[Service]]:
        """The services by domain (a domain may be served by several containers or hosts)."""
        out: dict[str, list[Service]] = {}
        for track in self._tracks.values():
            for service in track.services.values():
                out.setdefault(service.domain, []).append(service)
        return out

    def changes(self) -> AsyncIterator[ServiceChange]:
        """Every change from now on (from this call, not from the first ``anext``), in order."""
        # Registered here: a change made between ``it = view.changes()`` and the first
        # ``await anext(it)`` is not lost.
        queue: asyncio.Queue[ServiceChange] = asyncio.Queue()
        self._listeners.append(queue)

        async def follow() -> AsyncIterator[ServiceChange]:
            try:
                while True:
                    yield await queue.get()
            finally:
                self._listeners.remove(queue)

        return follow()

    # --- following ---------------------------------------------------------------------------

    async def _run(self) -> None:
        pairs = bindings(self.hosts, ["discovery"])
        async for message in self._client.subscribe(pairs, on_connect=self._resync_all):
            event = parse_event(message.routing_key or "", message.body)
            if isinstance(event, DiscoverySnapshot | DiscoveryEvent):
                await self._apply(event)

    async def _resync_all(self) -> None:
        """List every host (after each (re)subscription: what happened meanwhile is unknown)."""
        if self.hosts is not None:
            for host in self.hosts:
                await self._resync(host)
        else:
            try:
                results = await self._client.request_all("discovery.list", timeout=self.list_timeout)
            except DockhandError as err:  # e.g. no worker at all yet: the first message lists its host
                log.warning("discovery view: cannot list the hosts: %s", err)
                results = []
            for result in results:
                if result.status == "succeeded" and result.result is not None:
                    await self._listed(result.host_id, list(getattr(result.result, "services", [])))
            for host in set(self._tracks) - {r.host_id for r in results}:
                await self._resync(host)  # known before, silent now: ask it by name
        self._ready.set()

    async def _resync(self, host: str) -> None:
        self.resyncs += 1
        try:
            listed = await self._client.discovery.list(host=host, timeout=max(self.list_timeout, 10.0))
        except DockhandError as err:
            log.warning("discovery view: cannot list %s: %s", host, err)
            self._tracks.setdefault(host, _Track()).stale = True
            return
        await self._listed(host, listed.services)

    async def _listed(self, host: str, services: Iterable[Service]) -> None:
        """A fresh list of ``host``: the new state, and the next message sets the seq baseline (the
        list has no seq; comparing the next one with the seq before the list would see a gap)."""
        await self._replace(host, services)
        track = self._tracks[host]
        track.seq, track.stale = None, False

    async def _apply(self, event: DiscoverySnapshot | DiscoveryEvent) -> None:
        host = event.host_id
        track = self._tracks.get(host)
        epoch, seq = getattr(event, "epoch", None), getattr(event, "seq", None)
        if isinstance(event, DiscoverySnapshot):
            known = track.seq if track is not None and epoch == track.epoch else None
            if seq is not None and known is not None and seq <= known:
                return  # a copy of a snapshot applied already: newer deltas may follow it
            await self._replace(host, event.services)
            track = self._tracks[host]
            track.epoch, track.seq, track.stale = epoch, seq, False
            return
        if track is None or track.stale:  # seen for the first time, or its last list failed
            await self._resync(host)
        elif seq is not None:
            # The epoch is compared even right after a list (seq unknown then): a list carries none.
            if track.epoch is not None and epoch != track.epoch:
                log.info("discovery view: %s: a new epoch; listing it again", host)
                await self._resync(host)
            elif track.seq is not None and seq > track.seq + 1:
                log.info("discovery view: %s: a gap in seq (%d → %d); listing it again", host, track.seq, seq)
                await self._resync(host)
            elif track.seq is not None and seq <= track.seq:
                return  # a copy of what was applied already
        track = self._tracks[host]
        if seq is not None:
            track.epoch, track.seq = epoch, seq
        service = event.service
        if service is None:  # discovery.invalid
            return
        if event.type == "discovery.removed":
            if track.services.pop(service.container_id, None) is not None:
                await self._emit(ServiceChange("removed", host, service))
        else:
            old = track.services.get(service.container_id)
            track.services[service.container_id] = service
            if old is None:
                await self._emit(ServiceChange("added", host, service))
            elif old != service:
                await self._emit(ServiceChange("updated", host, service))

    async def _replace(self, host: str, services: Iterable[Service]) -> None:
        track = self._tracks.setdefault(host, _Track())
        new = {s.container_id: s for s in services}
        old, track.services = track.services, new
        for cid, service in old.items():
            if cid not in new:
                await self._emit(ServiceChange("removed", host, service))
        for cid, service in new.items():
            if cid not in old:
                await self._emit(ServiceChange("added", host, service))
            elif old[cid] != service:
                await self._emit(ServiceChange("updated", host, service))

    async def _emit(self, change: ServiceChange) -> None:
        for queue in self._listeners:
            queue.put_nowait(change)
        callback = self._callbacks[change.kind]
        if callback is not None:
            try:
                outcome = callback(change)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:  # a consumer's bug must not stop the view
                log.exception("discovery view: %s callback failed", change.kind)


@dataclass(frozen=True)
class HostState:
    """The latest heartbeat of one worker of a host."""

    host_id: str
    worker_id: str
    status: str
    role: str
    heartbeat: Heartbeat
    seen_at: float
    """``time.monotonic()`` when it arrived."""

    @property
    def age_s(self) -> float:
        """Seconds since that heartbeat arrived."""
        return time.monotonic() - self.seen_at


class HostsView(_View):
    """Hosts from heartbeats: ``view.up()`` are the hosts whose active worker was heard within
    ``stale_after_s`` (default: three heartbeat intervals of 10 s). Ready at the first heartbeat
    or after ``first_wait_s``."""

    def __init__(
        self,
        client: Client,
        *,
        hosts: Iterable[str] | None = None,
        stale_after_s: float = 30.0,
        first_wait_s: float = 0.0,
    ) -> None:
        super().__init__(client)
        self.hosts = list(hosts) if hosts is not None else None
        self.stale_after_s = stale_after_s
        self.first_wait_s = first_wait_s
        self._workers: dict[tuple[str, str], HostState] = {}
        self._changed = asyncio.Condition()

    def workers(self, host_id: str | None = None) -> list[HostState]:
        """The latest state of every worker heard (of one host), newest first."""
        states = [s for (h, _), s in self._workers.items() if host_id is None or h == host_id]
        return sorted(states, key=lambda s: -s.seen_at)

    def host(self, host_id: str) -> HostState | None:
        """The host's active worker's latest state (else its newest standby's), or None."""
        states = self.workers(host_id)
        active = [s for s in states if s.role == "active"]
        return (active or states)[0] if states else None

    def up(self) -> set[str]:
        """Hosts whose active worker sent a heartbeat within ``stale_after_s``."""
        return {s.host_id for s in self._workers.values() if s.role == "active" and s.age_s <= self.stale_after_s}

    async def wait_for(self, predicate: Callable[[HostsView], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate(view)`` holds: checked at each heartbeat and at least every
        second (a quarter of ``stale_after_s`` if shorter), since staleness (a host falling out of
        :meth:`up`) comes with no message at all; :class:`TimeoutError` after ``timeout``."""
        poll_s = max(0.05, min(1.0, self.stale_after_s / 4))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._changed:
            while not predicate(self):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"HostsView: the condition did not hold within {timeout:g} s")
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that comes
                # just as the wait ends, and a cancelled caller would then go on waiting.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(poll_s, remaining)):
                        await self._changed.wait()

    async def _run(self) -> None:
        if self.first_wait_s <= 0:
            self._ready.set()
        else:
            asyncio.get_running_loop().call_later(self.first_wait_s, self._ready.set)
        async for message in self._client.subscribe(bindings(self.hosts, ["health"])):
            event = parse_event(message.routing_key or "", message.body)
            if isinstance(event, Heartbeat):
                self._workers[(event.host_id, event.worker_id)] = HostState(
                    event.host_id, event.worker_id, event.status, event.role, event, time.monotonic()
                )
                self._ready.set()
                async with self._changed:
                    self._changed.notify_all()
