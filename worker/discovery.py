"""Label discovery: which containers of the host announce a service, read from their labels.

Reads any container (managed or not) and never changes one.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from schemas import Service

from .docker_ops import DockerOps
from .labels import Labels

_DOMAIN = re.compile(r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")


class InvalidLabels(ValueError):
    """An enabled container whose discovery labels do not parse; ``str()`` is the reason."""


def is_enabled(labels: dict[str, str] | None, names: Labels) -> bool:
    return (labels or {}).get(names.discovery("enabled"), "").lower() == "true"


def parse_service(info: dict[str, Any], names: Labels) -> Service:
    """The service a container inspect announces; :class:`InvalidLabels` when the labels are bad."""
    labels: dict[str, str] = info["Config"].get("Labels") or {}
    domain = labels.get(names.discovery("domain"), "").strip()
    if not domain:
        raise InvalidLabels(f"label {names.discovery('domain')} is missing")
    if len(domain) > 253 or not _DOMAIN.match(domain):
        raise InvalidLabels(f"label {names.discovery('domain')}={domain!r} is not a valid domain")
    raw_port = labels.get(names.discovery("port"), "").strip()
    if not raw_port:
        raise InvalidLabels(f"label {names.discovery('port')} is missing")
    if not raw_port.isdigit() or not 1 <= int(raw_port) <= 65535:
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
        port: int(bindings[0]["HostPort"])
        for port, bindings in sorted((settings.get("Ports") or {}).items())
        if bindings and bindings[0].get("HostPort")
    }
    return Service(
        container_id=info["Id"],
        container_name=info["Name"].lstrip("/"),
        domain=domain,
        port=int(raw_port),
        description=labels.get(names.discovery("description")),
        networks=networks,
        host_ports=host_ports,
    )


async def list_services(ops: DockerOps) -> list[Service]:
    """Every valid service of the running containers (invalid ones are left out)."""
    filters = json.dumps({"label": [f"{ops.labels.discovery('enabled')}=true"], "status": ["running"]})
    containers = await ops.call(
        "container.list", lambda: ops.docker.containers.list(filters=filters), subject=f"containers on {ops.host_id}"
    )
    limit = asyncio.Semaphore(16)

    async def one(container: Any) -> Service | None:
        async with limit:
            info = await ops.maybe("container.inspect", container.show, subject=f"container {container.id}")
        if info is None:
            return None
        try:
            return parse_service(info, ops.labels)
        except InvalidLabels:
            return None

    services = [s for s in await asyncio.gather(*(one(c) for c in containers)) if s is not None]
    return sorted(services, key=lambda s: (s.domain, s.container_name))
