"""Label discovery: which containers of the host announce a service, read from their labels.

Reads any container (managed or not) and never changes one. :class:`Discovery` keeps the
current service set and publishes each change once: ``added`` when a service appears,
``removed`` when it goes, ``updated`` when its addresses or health change, ``invalid`` when an
enabled container's labels do not parse. Events are incremental (one inspect of the one
container); a full list happens only at start-up, after a gap in the event stream, and
periodically — and every full list ends in a snapshot.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from schemas import DiscoveryEvent, DiscoverySnapshot, Service, WireModel, utcnow
from schemas.events import InvalidService

from .docker_ops import DockerOps
from .labels import Labels

log = logging.getLogger("dockhand.discovery")

_DOMAIN = re.compile(r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
_LIST_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)")

_LIST_KEYS = ("Id", "Names", "Labels", "State", "Status", "Ports", "NetworkSettings")

Publish = Callable[[str, WireModel], Awaitable[None]]


class InvalidLabels(ValueError):
    """An enabled container whose discovery labels do not parse; ``str()`` is the reason."""


def is_enabled(labels: dict[str, str] | None, names: Labels) -> bool:
    return (labels or {}).get(names.discovery("enabled"), "").lower() == "true"


def from_list_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A ``GET /containers/json`` entry in the shape of an inspect, as far as discovery reads it,
    so a full list and an incremental inspect yield the very same :class:`Service`."""
    ports: dict[str, list[dict[str, str]]] = {}
    for port in entry.get("Ports") or []:
        if port.get("PublicPort"):
            key = f"{port['PrivatePort']}/{port.get('Type', 'tcp')}"
            ports.setdefault(key, []).append({"HostIp": port.get("IP", ""), "HostPort": str(port["PublicPort"])})
    match = _LIST_HEALTH.search(entry.get("Status") or "")
    health = {"healthy": "healthy", "unhealthy": "unhealthy", "health: starting": "starting"}.get(
        match.group(1) if match else ""
    )
    names = entry.get("Names") or [""]
    return {
        "Id": entry["Id"],
        "Name": names[0],
        "Config": {"Labels": entry.get("Labels") or {}},
        "State": {
            # Docker's inspect says Running (and Paused) for a paused container.
            "Running": entry.get("State") in {"running", "paused"},
            **({"Health": {"Status": health}} if health else {}),
        },
        "NetworkSettings": {"Networks": (entry.get("NetworkSettings") or {}).get("Networks") or {}, "Ports": ports},
    }


def health_of(info: dict[str, Any]) -> str | None:
    return ((info.get("State") or {}).get("Health") or {}).get("Status")


def parse_service(info: dict[str, Any], names: Labels) -> Service:
    """The service a container (inspect shape) announces; :class:`InvalidLabels` when the labels are bad."""
    labels: dict[str, str] = info["Config"].get("Labels") or {}
    domain = labels.get(names.discovery("domain"), "").strip()
    if not domain:
        raise InvalidLabels(f"label {names.discovery('domain')} is missing")
    if len(domain) > 253 or not _DOMAIN.match(domain):
        raise InvalidLabels(f"label {names.discovery('domain')}={domain!r} is not a valid domain")
    raw_port = labels.get(names.discovery("port"), "").strip()
    if not raw_port:
        raise InvalidLabels(f"label {names.discovery('port')} is missing")
    # isascii: str.isdigit() accepts "²", which int() then refuses.
    if not (raw_port.isascii() and raw_port.isdigit()) or not 1 <= int(raw_port) <= 65535:
        raise InvalidLabels(f"label {names.discovery('port')}={raw_port!r} is not a port (1..65535)")
    settings = info.get("NetworkSettings") or {}
    networks = {
        name: endpoint.get("IPAddress") or "" for name, endpoint in sorted((settings.get("Networks") or {}).items())
    }
    wanted = labels.get(names.discovery("network"))
    if wanted:
        if wanted not in networks:
            raise InvalidLabels(f"label {names.discovery('network')}={wanted!r}: container is not on that network")
        networks = {wanted: networks[wanted]}
    host_ports = {
        # The smallest host port of a binding: IPv4 and IPv6 bindings may be listed in any order.
        port: min(int(b["HostPort"]) for b in bindings if b.get("HostPort"))
        for port, bindings in sorted((settings.get("Ports") or {}).items())
        if bindings and any(b.get("HostPort") for b in bindings)
    }
    return Service(
        container_id=info["Id"],
        container_name=info["Name"].lstrip("/"),
        domain=domain,
        port=int(raw_port),
        description=labels.get(names.discovery("description")),
        networks=networks,
        host_ports=host_ports,
        health=health_of(info),
    )


def _from_event(container_id: str, attributes: dict[str, str]) -> dict[str, Any]:
    """Inspect shape from an event's actor attributes (labels, name), for a container that was
    already gone when we looked: the service still appeared, so it is still announced."""
    labels = {k: v for k, v in attributes.items() if k not in {"name", "image", "exitCode", "signal"}}
    return {
        "Id": container_id,
        "Name": attributes.get("name", ""),
        "Config": {"Labels": labels},
        "State": {"Running": False},
        "NetworkSettings": {},
    }


class Discovery:
    """The host's discovered services, kept current from Docker events."""

    def __init__(self, ops: DockerOps, publish: Publish, *, require_healthy: bool = False) -> None:
        self.ops = ops
        self.names = ops.labels
        self.host_id = ops.host_id
        self.require_healthy = require_healthy
        self.services: dict[str, Service] = {}
        self.invalid: dict[str, str] = {}
        self._publish = publish

    # --- rules ------------------------------------------------------------------------------

    def _waiting_for_health(self, info: dict[str, Any]) -> bool:
        """In healthy-only mode a container with a healthcheck counts once it is healthy;
        one without a healthcheck counts when it runs."""
        health = health_of(info)
        return self.require_healthy and health is not None and health != "healthy"

    # --- incremental ------------------------------------------------------------------------

    def wants_inspect(self, action: str, attributes: dict[str, str]) -> bool:
        """Whether handling this event will start with an inspect (so it can be started early)."""
        return action == "start" and is_enabled(attributes, self.names)

    async def on_container_event(
        self,
        action: str,
        container_id: str,
        attributes: dict[str, str],
        inspected: Awaitable[dict[str, Any] | None] | None = None,
    ) -> None:
        if not is_enabled(attributes, self.names) and container_id not in self.services:
            return  # not a discovery container: no inspect, no work
        if action == "start":
            await self._appear(container_id, attributes, inspected)
        elif action in {"die", "stop", "destroy"}:
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

    async def on_network_event(self, action: str, container_id: str | None) -> None:
        # An invalid one too: connecting it to its `network` label's network makes it valid.
        if (
            action in {"connect", "disconnect"}
            and container_id
            and (container_id in self.services or container_id in self.invalid)
        ):
            await self._refresh(container_id)

    async def inspect(self, container_id: str) -> dict[str, Any] | None:
        container = self.ops.docker.containers.container(container_id)
        info: dict[str, Any] | None = await self.ops.maybe(
            "container.inspect", container.show, subject=f"container {container_id[:12]} on {self.host_id}"
        )
        return info

    async def _appear(
        self, container_id: str, attributes: dict[str, str], inspected: Awaitable[dict[str, Any] | None] | None = None
    ) -> None:
        info = await (inspected or self.inspect(container_id)) or _from_event(container_id, attributes)
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

    async def _settle(self, container_id: str, info: dict[str, Any]) -> None:
        """Publish whatever changed for one container, given its current description."""
        try:
            service = parse_service(info, self.names)
        except InvalidLabels as exc:
            gone = self.services.pop(container_id, None)
            if gone is not None:
                await self._emit("discovery.removed", gone)
            await self._mark_invalid(container_id, info, str(exc))
            return
        self.invalid.pop(container_id, None)
        known = self.services.get(container_id)
        self.services[container_id] = service
        if known is None:
            await self._emit("discovery.added", service)
        elif known != service:
            await self._emit("discovery.updated", service)

    async def _disappear(self, container_id: str) -> None:
        self.invalid.pop(container_id, None)
        service = self.services.pop(container_id, None)
        if service is not None:
            await self._emit("discovery.removed", service)

    async def _mark_invalid(self, container_id: str, info: dict[str, Any], reason: str) -> None:
        if self.invalid.get(container_id) == reason:
            return
        self.invalid[container_id] = reason
        log.warning("container %s has invalid discovery labels: %s", info["Name"].lstrip("/"), reason)
        event = DiscoveryEvent(
            event_id=_event_id(),
            host_id=self.host_id,
            type="discovery.invalid",
            time=utcnow(),
            container=InvalidService(container_id=container_id, container_name=info["Name"].lstrip("/")),
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
        entries = await list_enabled(self.ops)
        seen: set[str] = set()
        for entry in entries:
            info = from_list_entry(entry)
            if self._waiting_for_health(info):
                continue
            seen.add(info["Id"])
            await self._settle(info["Id"], info)
        for container_id in [c for c in self.services if c not in seen]:
            await self._disappear(container_id)
        for container_id in [c for c in self.invalid if c not in seen]:
            self.invalid.pop(container_id, None)
        services = self.current()
        snapshot = DiscoverySnapshot(
            event_id=_event_id(), host_id=self.host_id, time=utcnow(), services=services, reason=reason
        )
        await self._publish(f"{self.host_id}.discovery.snapshot", snapshot)
        log.info("discovery %s: %d service(s), %d invalid", reason, len(services), len(self.invalid))
        return services

    def current(self) -> list[Service]:
        return sorted(self.services.values(), key=lambda s: (s.domain, s.container_name))


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
    """The current service set from a fresh list (what ``discovery.list`` answers)."""
    services = []
    for entry in await list_enabled(ops):
        info = from_list_entry(entry)
        if require_healthy and health_of(info) not in (None, "healthy"):
            continue
        try:
            services.append(parse_service(info, ops.labels))
        except InvalidLabels:
            continue
    return sorted(services, key=lambda s: (s.domain, s.container_name))
