"""Label discovery: which containers of the host announce a service, kept current and published.

Reads any container (managed or not) and never changes one; what its labels announce is read
by :mod:`.services`. :class:`Discovery` keeps the current service set and publishes each change
once: ``added`` when a service appears, ``removed`` when it goes, ``updated`` when its addresses
or health change, ``invalid`` when an enabled container's labels do not parse. Events are
incremental (one inspect of the one container); a full list happens only at start-up, after a
gap in the event stream, and periodically — and every full list ends in a snapshot.

A domain is announced once per host: of the containers claiming it (case-insensitively), the
oldest (created first, then the smaller id) holds it; every other claimant is ``invalid``, with
a reason naming the holder, and is announced when it becomes the oldest remaining claim. The
rule depends on nothing but the current containers, so the event path, a full reconcile,
``discovery.list`` and every worker of the host agree on the holder.

A list can also lag the events: dockerd logs a container's ``die`` before its list view stops
calling it running (the exit is cleaned up in between), so a list asked for after a ``die`` may
still show the container. A container whose exit discovery has applied is therefore taken from
a list only if an inspect — which waits for the exit to be handled — says it runs.

An event older than the last full list (Docker's ``timeNano`` against the time the list was
asked for) cannot tell anything that list did not: after a daemon restart, Docker replays the
die/stop/start of its own restore *after* the worker's resync list, and applying them would
announce a running service as removed and then added again. Such an event is answered from the
container's current state instead, with one inspect per container and list, so it publishes
only what really differs from the snapshot (usually nothing).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal

from dockhand.schemas import DiscoveryEvent, DiscoverySnapshot, Service, utcnow
from dockhand.schemas.events import InvalidService

from .docker import DockerOps
from .publishing import Publish
from .services import (
    InvalidLabels,
    claim_key,
    domain_key,
    from_event,
    from_list_entry,
    health_of,
    is_enabled,
    parse_service,
)

log = logging.getLogger("dockhand.discovery")

_LIST_KEYS = ("Id", "Names", "Labels", "State", "Status", "Ports", "NetworkSettings", "Created")
# The container actions discovery acts on (health_status too); the others change no service.
_DISCOVERY_ACTIONS = frozenset({"start", "die", "stop", "destroy", "rename"})


class Discovery:
    """The host's discovered services, kept current from Docker events."""

    def __init__(self, ops: DockerOps, publish: Publish, *, require_healthy: bool = False) -> None:
        self.ops = ops
        self.names = ops.labels
        self.host_id = ops.host_id
        self.require_healthy = require_healthy
        self.services: dict[str, Service] = {}  # announced: at most one per domain
        self.invalid: dict[str, str] = {}  # container id -> reason (bad labels, or a domain held by another)
        self.claims: dict[str, _Claim] = {}  # every container whose labels parse, announced or not
        self._claimants: dict[str, set[str]] = {}  # domain key -> ids of its claims (an index of claims)
        self._holders: dict[str, str] = {}  # domain key -> id of the container announcing it
        self._publish = publish
        # Unix ns just before the last successful full list; events older than it are stale.
        self.listed_at_ns: int | None = None
        self._redecided: set[str] = set()  # containers already re-read since that list
        # Containers whose die/stop/destroy was applied and that have not started since: a list
        # showing one of them running may predate its exit (see the module docstring).
        self._exited: set[str] = set()

    # --- rules ------------------------------------------------------------------------------

    def _waiting_for_health(self, info: dict[str, Any]) -> bool:
        """In healthy-only mode a container with a healthcheck counts once it is healthy;
        one without a healthcheck counts when it runs."""
        health = health_of(info)
        return self.require_healthy and health is not None and health != "healthy"

    # --- incremental ------------------------------------------------------------------------

    def predates_list(self, time_nano: int | None) -> bool:
        """Whether an event (Docker's ``timeNano``) happened before the last full list was asked
        for, so that list already reflects it. The daemon's clock is the worker's (same host); a
        skew only moves which events are answered from current state, never the outcome."""
        if not time_nano or self.listed_at_ns is None:
            return False
        return time_nano < self.listed_at_ns

    def wants_inspect(self, action: str, attributes: dict[str, str]) -> bool:
        """Whether handling this event will start with an inspect (so it can be started early)."""
        return action == "start" and is_enabled(attributes, self.names)

    async def on_container_event(
        self,
        action: str,
        container_id: str,
        attributes: dict[str, str],
        inspected: Awaitable[dict[str, Any] | None] | None = None,
        *,
        time_nano: int | None = None,
    ) -> None:
        if not is_enabled(attributes, self.names) and container_id not in self.services:
            return  # not a discovery container: no inspect, no work
        if action not in _DISCOVERY_ACTIONS and not action.startswith("health_status"):
            return
        if self.predates_list(time_nano):
            await self._redecide(container_id, inspected)
        elif action == "start":
            self._exited.discard(container_id)
            await self._appear(container_id, attributes, inspected)
        elif action in {"die", "stop", "destroy"}:
            self._exited.add(container_id)
            await self._disappear(container_id)
        elif action.startswith("health_status"):
            status = action.partition(": ")[2]
            if self.require_healthy and status == "unhealthy":
                await self._disappear(container_id)
            elif self.require_healthy and status == "healthy" and container_id not in self.services:
                await self._appear(container_id, attributes)
            else:
                await self._refresh(container_id)
        elif action == "rename":
            await self._refresh(container_id)

    async def on_network_event(self, action: str, container_id: str | None, *, time_nano: int | None = None) -> None:
        # An invalid one too: connecting it to its `network` label's network makes it valid.
        if (
            action in {"connect", "disconnect"}
            and container_id
            and (container_id in self.services or container_id in self.invalid)
        ):
            if self.predates_list(time_nano):
                await self._redecide(container_id)
            else:
                await self._refresh(container_id)

    async def _redecide(self, container_id: str, inspected: Awaitable[dict[str, Any] | None] | None = None) -> None:
        """A stale event: publish what differs between the container's current state and what
        discovery holds (one inspect per container since the last list; later stale events of
        the same container are older than that inspect and add nothing)."""
        if container_id in self._redecided:
            return
        self._redecided.add(container_id)
        info = await (inspected or self.inspect(container_id))
        running = info is not None and bool(info["State"].get("Running"))
        if running:
            self._exited.discard(container_id)
        else:
            self._exited.add(container_id)
        if info is None or not running or self._waiting_for_health(info):
            await self._disappear(container_id)  # publishes only if it is still announced
        else:
            await self._settle(container_id, info)

    async def inspect(self, container_id: str) -> dict[str, Any] | None:
        container = self.ops.docker.containers.container(container_id)
        info: dict[str, Any] | None = await self.ops.maybe(
            "container.inspect", container.show, subject=f"container {container_id[:12]} on {self.host_id}"
        )
        return info

    async def _appear(
        self, container_id: str, attributes: dict[str, str], inspected: Awaitable[dict[str, Any] | None] | None = None
    ) -> None:
        info = await (inspected or self.inspect(container_id)) or from_event(container_id, attributes)
        if info["State"].get("Running") and self._waiting_for_health(info):
            return
        await self._settle(container_id, info)

    async def _refresh(self, container_id: str) -> None:
        info = await self.inspect(container_id)
        if info is None or not info["State"].get("Running"):
            return  # stopping: die/stop/destroy will say so
        if self._waiting_for_health(info):
            await self._disappear(container_id)
            return
        await self._settle(container_id, info)

    async def _settle(self, container_id: str, info: dict[str, Any], *, arbitrate: bool = True) -> set[str]:
        """Publish whatever changed for one container, given its current description; returns
        the domains whose holder may have changed (decided here unless ``arbitrate`` is off)."""
        try:
            service = parse_service(info, self.names)
        except InvalidLabels as exc:
            domains = self._drop_claim(container_id)
            gone = self.services.pop(container_id, None)
            if gone is not None:
                await self._emit("discovery.removed", gone)
            await self._mark_invalid(container_id, info["Name"].lstrip("/"), str(exc))
        else:
            domains = self._drop_claim(container_id) | {domain_key(service.domain)}
            self.claims[container_id] = _Claim(claim_key(info), service)
            self._claimants.setdefault(domain_key(service.domain), set()).add(container_id)
        if arbitrate:
            for domain in sorted(domains):
                await self._arbitrate(domain)
        return domains

    def _drop_claim(self, container_id: str) -> set[str]:
        claim = self.claims.pop(container_id, None)
        if claim is None:
            return set()
        domain = domain_key(claim.service.domain)
        claimants = self._claimants.get(domain, set())
        claimants.discard(container_id)
        if not claimants:
            self._claimants.pop(domain, None)
        return {domain}

    async def _arbitrate(self, domain: str) -> None:
        """Announce the oldest claim of ``domain`` (only it), mark the others invalid."""
        contenders = sorted((self.claims[c].key, c) for c in self._claimants.get(domain, ()))
        winner = contenders[0][1] if contenders else None
        # A displaced holder goes first: a consumer never sees two holders of one domain.
        holder = self._holders.get(domain)
        if holder is not None and holder != winner:
            del self._holders[domain]
            displaced = self.services.get(holder)
            if displaced is not None and domain_key(displaced.domain) == domain:
                del self.services[holder]
                await self._emit("discovery.removed", displaced)
        if winner is None:
            return
        service = self.claims[winner].service
        self.invalid.pop(winner, None)
        known = self.services.get(winner)
        self.services[winner] = service
        self._holders[domain] = winner
        if known is None:
            await self._emit("discovery.added", service)
        elif known != service:
            await self._emit("discovery.updated", service)
        for _, container_id in contenders[1:]:
            reason = (
                f"domain {service.domain} is already announced on {self.host_id} by container "
                f"{service.container_name} ({winner[:12]}), the oldest claim"
            )
            await self._mark_invalid(container_id, self.claims[container_id].service.container_name, reason)

    async def _disappear(self, container_id: str) -> None:
        self.invalid.pop(container_id, None)
        domains = self._drop_claim(container_id)
        service = self.services.pop(container_id, None)
        if service is not None:
            await self._emit("discovery.removed", service)
        # The next claimant of its domain, if any, is announced now.
        for domain in sorted(domains):
            await self._arbitrate(domain)

    async def _mark_invalid(self, container_id: str, name: str, reason: str) -> None:
        if self.invalid.get(container_id) == reason:
            return
        self.invalid[container_id] = reason
        log.warning("container %s has invalid discovery labels: %s", name, reason)
        event = DiscoveryEvent(
            event_id=_event_id(),
            host_id=self.host_id,
            type="discovery.invalid",
            time=utcnow(),
            container=InvalidService(container_id=container_id, container_name=name),
            reason=reason,
        )
        await self._publish(f"{self.host_id}.discovery.invalid", event)

    async def _emit(
        self, kind: Literal["discovery.added", "discovery.removed", "discovery.updated"], service: Service
    ) -> None:
        event = DiscoveryEvent(event_id=_event_id(), host_id=self.host_id, type=kind, time=utcnow(), service=service)
        await self._publish(f"{self.host_id}.{kind}", event)

    # --- full list ----------------------------------------------------------------------------

    async def reconcile(self, reason: Literal["startup", "resync", "periodic"]) -> list[Service]:
        """List every running discovery container, publish the differences, then a snapshot."""
        asked_at = time.time_ns()  # before the list: whatever happened earlier is in it
        entries = await self._still_running(await list_enabled(self.ops))
        self.listed_at_ns = asked_at
        self._redecided.clear()
        seen: set[str] = set()
        touched: set[str] = set()
        # Every claim first, then one decision per domain: no transient holder in between.
        for entry in entries:
            info = from_list_entry(entry)
            if self._waiting_for_health(info):
                continue
            seen.add(info["Id"])
            touched |= await self._settle(info["Id"], info, arbitrate=False)
        for container_id in [c for c in self.claims if c not in seen]:
            touched |= self._drop_claim(container_id)
        for container_id in [c for c in self.services if c not in seen]:  # not claimed any more
            touched.add(domain_key(self.services[container_id].domain))
        for container_id in [c for c in self.invalid if c not in seen]:
            self.invalid.pop(container_id, None)
        for domain in sorted(touched):
            await self._arbitrate(domain)
        services = self.current()
        snapshot = DiscoverySnapshot(
            event_id=_event_id(), host_id=self.host_id, time=utcnow(), services=services, reason=reason
        )
        await self._publish(f"{self.host_id}.discovery.snapshot", snapshot)
        log.info("discovery %s: %d service(s), %d invalid", reason, len(services), len(self.invalid))
        return services

    async def _still_running(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The list without the containers it shows running although their exit was applied
        and an inspect says they are not running (one inspect per such container); an exited
        container the list no longer shows is forgotten."""
        listed = {entry["Id"] for entry in entries}
        self._exited &= listed
        kept = []
        for entry in entries:
            if entry["Id"] in self._exited:
                info = await self.inspect(entry["Id"])
                if info is None or not info["State"].get("Running"):
                    continue
                self._exited.discard(entry["Id"])
            kept.append(entry)
        return kept

    def current(self) -> list[Service]:
        return sorted(self.services.values(), key=lambda s: (s.domain, s.container_name))


@dataclass(frozen=True, slots=True)
class _Claim:
    """A container whose labels parse, and the rank of its claim on the domain."""

    key: tuple[int, str]
    service: Service


def _event_id() -> str:
    return uuid.uuid4().hex


async def list_enabled(ops: DockerOps) -> list[dict[str, Any]]:
    """Running (or paused) containers with ``<discovery prefix>.enabled=true`` (raw list entries)."""
    # Paused containers stay services (only stop/die/destroy remove one), as on the event path.
    filters = json.dumps({"label": [f"{ops.labels.discovery('enabled')}=true"], "status": ["running", "paused"]})

    async def fetch() -> list[dict[str, Any]]:
        containers = await ops.docker.containers.list(filters=filters)
        return [{key: c[key] for key in _LIST_KEYS if key in c} for c in containers]

    return await ops.call("container.list", fetch, subject=f"containers on {ops.host_id}")


async def list_services(ops: DockerOps, *, require_healthy: bool = False) -> list[Service]:
    """The current service set from a fresh list (what ``discovery.list`` answers).

    Under tenancy a sender sees only the services of its own workspaces; unmanaged containers
    have no owner and are shown to admins only.
    """
    holders: dict[str, tuple[tuple[int, str], Service, bool]] = {}
    for entry in await list_enabled(ops):
        info = from_list_entry(entry)
        if require_healthy and health_of(info) not in (None, "healthy"):
            continue
        try:
            service = parse_service(info, ops.labels)
        except InvalidLabels:
            continue
        # The holder of a domain is decided among all claimants (the oldest, as Discovery does);
        # only then is it filtered by owner.
        key, domain = claim_key(info), domain_key(service.domain)
        if domain not in holders or key < holders[domain][0]:
            holders[domain] = (key, service, ops.owns(info["Config"]["Labels"]))
    services = [service for _, service, visible in holders.values() if visible]
    return sorted(services, key=lambda s: (s.domain, s.container_name))
