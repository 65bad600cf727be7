"""Garbage: what this host made and nothing uses any more (contract v1.1, issue 14).

Found on each periodic pass of the active worker (worker/janitor.py) and reported; removed only
with ``DOCKHAND_GC=true``. Two rules make it safe on a Docker host that others share (Nomad's
reaper, lacking them, removed other clients' containers): only objects labelled managed by
*this* host, and never one younger than ``DOCKHAND_GC_GRACE_S`` (a network made by
``network.ensure`` a moment ago, for a workspace about to join it, is not garbage).

- networks this host made that no container (of anyone, running or not) is on, but for the
  default networks, which any create may be about to join;
- volumes this host made that no container mounts (Docker's ``dangling``), leases included
  once their workspace is gone;
- snapshots older than ``DOCKHAND_SNAPSHOT_MAX_AGE_S`` (unset: kept) that no container uses.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from dockhand.schemas import utcnow

from ..errors import DockhandError
from . import handles
from .calls import JSON, DockerCalls
from .models import listed, parse_docker_time

log = logging.getLogger("dockhand.gc")


@dataclass
class Garbage:
    """What one pass found (names), and what it removed."""

    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.networks or self.volumes or self.snapshots)


class Collector:
    """Finds (and, when told to, removes) this host's unused networks, volumes and snapshots."""

    def __init__(self, ops: DockerCalls) -> None:
        self.ops = ops

    def _old(self, created: str | None, grace_s: float) -> bool:
        when = parse_docker_time(created)
        return when is not None and utcnow() - when >= timedelta(seconds=grace_s)

    async def _list(self, operation: str, fn: Any) -> list[JSON]:
        return cast(list[JSON], await self.ops.call(operation, fn, subject=f"garbage on {self.ops.host_id}"))

    async def find(self) -> Garbage:
        """One pass: every candidate, by the two rules (this host's, older than the grace)."""
        ops, settings = self.ops, self.ops.settings
        mine = {"label": ops.host_label_filter()}
        grace = settings.gc_grace_s
        found = Garbage()
        # Every container, anyone's: a stopped one still names its networks (and would not start
        # again without them), which a network's own inspect does not show.
        containers = await self.ops.call(
            "container.list", lambda: ops.docker.containers.list(all=True), subject=f"garbage on {ops.host_id}"
        )
        in_use = {name for c in containers for name in (listed(c, "NetworkSettings", {}) or {}).get("Networks") or {}}
        networks = await self._list("network.list", lambda: ops.docker.networks.list(filters=mine))
        found.networks = sorted(
            n["Name"]
            for n in networks
            if ops.labels.is_managed_by(n.get("Labels"), ops.host_id)
            and n["Name"] not in in_use
            and not n.get("Containers")
            # The default networks (per owner, egress-free) stay: every create may join them.
            and not n["Name"].startswith(settings.default_network)
            and self._old(n.get("Created"), grace)
        )
        volumes = await ops.call(
            "volume.list",
            lambda: handles.volumes(ops.docker).list(filters={**mine, "dangling": ["true"]}),
            subject=f"garbage on {ops.host_id}",
        )
        # A lease (leases.py) is never mounted: it is garbage once its workspace's container is gone.
        alive = {c.id for c in containers}
        found.volumes = sorted(
            v["Name"]
            for v in (volumes or {}).get("Volumes") or []
            if ops.labels.is_managed_by(v.get("Labels"), ops.host_id)
            and self._old(v.get("CreatedAt"), grace)
            and (v.get("Labels") or {}).get(ops.labels.lease_container) not in alive
        )
        if settings.snapshot_max_age_s is not None:
            age = max(grace, settings.snapshot_max_age_s)
            filters = json.dumps({"label": [*ops.host_label_filter(), ops.labels.snapshot_of]})
            images = await self._list("image.list", lambda: ops.docker.images.list(filters=filters))
            used = {listed(c, "ImageID", None) for c in containers}
            found.snapshots = sorted(
                tag
                for image in images
                if ops.labels.is_managed_by(image.get("Labels"), ops.host_id)
                and image.get("Id") not in used
                and utcnow().timestamp() - int(image.get("Created") or 0) >= age
                for tag in image.get("RepoTags") or []
            )
        return found

    async def collect(self, *, remove: bool) -> Garbage:
        """Find; then, with ``remove``, remove each one (a failure is logged: used again meanwhile)."""
        found = await self.find()
        if not remove:
            return found
        removals = (
            [("network", n, lambda n=n: handles.network(self.ops.docker, n).delete()) for n in found.networks]
            + [("volume", v, lambda v=v: handles.volume(self.ops.docker, v).delete()) for v in found.volumes]
            + [("snapshot", s, lambda s=s: self.ops.docker.images.delete(s)) for s in found.snapshots]
        )
        for kind, name, delete in removals:
            try:
                await self.ops.call(f"{kind}.delete", delete, subject=f"unused {kind} {name}")
                found.removed.append(name)
            except DockhandError as exc:
                log.info("unused %s %s not removed: %s", kind, name, exc.message)
        return found
