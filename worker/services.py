"""Services announced by container labels: the pure part of discovery.

What a container (in the shape of ``GET /containers/{id}/json``) announces under the
``<discovery prefix>.*`` labels (:func:`parse_service`), the same shape from a list entry
(:func:`from_list_entry`) or an event (:func:`from_event`), and the rank of a container's claim
on its domain (:func:`claim_key`). Nothing here talks to Docker or publishes.
"""

from __future__ import annotations

import re
from typing import Any

from dockhand.schemas import Service

from .docker import parse_docker_time
from .labels import Labels

_DOMAIN = re.compile(r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
_LIST_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)")
# A container known only from its event (already gone when inspected): it never outranks one
# whose creation time is known.
_UNKNOWN_CREATED = 2**62


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
        "Created": entry.get("Created"),
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


def claim_key(info: dict[str, Any]) -> tuple[int, str]:
    """Rank of a container's claim on its domain, smallest first: creation time in whole
    seconds (what a list entry gives; an inspect's nanoseconds are cut to match), then id."""
    created = info.get("Created")
    seconds = _UNKNOWN_CREATED
    if isinstance(created, int | float) and not isinstance(created, bool):
        seconds = int(created)
    elif isinstance(created, str) and (parsed := parse_docker_time(created)) is not None:
        seconds = int(parsed.timestamp())
    return seconds, str(info["Id"])


def domain_key(domain: str) -> str:
    """Domains are compared as DNS does: case-insensitively."""
    return domain.lower()


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
        # Empty: an image's label the worker overrode (see DockerOps._inherited_labels).
        description=labels.get(names.discovery("description")) or None,
        networks=networks,
        host_ports=host_ports,
        health=health_of(info),
    )


def from_event(container_id: str, attributes: dict[str, str]) -> dict[str, Any]:
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
