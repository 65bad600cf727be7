"""Workspace deadlines (contract v1.1 ``ttl_s``, ``workspace.extend``), kept in Docker itself.

A create with ``ttl_s`` writes the deadline on the container (label ``<prefix>.expires-at``, and
``<prefix>.on-expiry``). Docker cannot change a container's labels, so ``workspace.extend`` writes
each later deadline on a *lease*: an empty named volume labelled with the workspace, its
container's id and the new deadline. Both live on the Docker host, so whichever worker of the
host is active sees them, across worker restarts, fail-over and Docker restarts. The newest
lease of the workspace's current container wins (a lease of an earlier container of the same
workspace id means nothing); older leases are removed.

:class:`Leases` keeps the host's deadlines in memory for the expiry loop (worker/expiry.py):
rebuilt from Docker by :meth:`Leases.scan`, kept current by creates, extends and removes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, cast

from dockhand.schemas import utcnow
from dockhand.schemas.results import Workspace

from . import handles
from .calls import JSON, DockerCalls
from .containers import Containers
from .models import parse_docker_time

log = logging.getLogger("dockhand.expiry")

Action = Literal["stop", "remove"]


def stamp(moment: datetime) -> str:
    """A deadline as a label value: ISO 8601, UTC, ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Deadline:
    """When a workspace's container expires, and what expiry does to it."""

    workspace_id: str
    container_id: str
    expires_at: datetime
    action: Action


class Leases:
    """The host's workspace deadlines: read from Docker, moved by ``workspace.extend``."""

    def __init__(self, ops: DockerCalls, containers: Containers) -> None:
        self.ops = ops
        self.containers = containers
        self.deadlines: dict[str, Deadline] = {}
        """By workspace id: every workspace of this host that has a deadline."""
        self.changed = asyncio.Event()
        """Set when a deadline is added or moved: the expiry loop looks again."""
        containers.deadline_of = self._seen
        self._leased: set[str] = set()
        """Workspace ids that may have leases: every one a scan saw, and every one extended. Once
        a scan has run (``_scanned``), a remove of any other workspace lists none."""
        self._scanned = False
        self._extends = 0  # extends so far (a drop that raced one keeps the id in _leased)

    # --- reading ----------------------------------------------------------------------------

    def _action(self, labels: dict[str, str]) -> Action:
        return "remove" if labels.get(self.ops.labels.on_expiry) == "remove" else "stop"

    def from_container(self, info: JSON) -> Deadline | None:
        """The deadline a container's own labels give (a create's ``ttl_s``), if any."""
        labels: dict[str, str] = info["Config"].get("Labels") or {}
        expires_at = parse_docker_time(labels.get(self.ops.labels.expires_at))
        if expires_at is None:
            return None
        workspace_id = labels.get(self.ops.labels.workspace_id, "")
        return Deadline(workspace_id, info["Id"], expires_at, self._action(labels))

    def of(self, info: JSON) -> Deadline | None:
        """A container's deadline: the newest known lease of this very container, else its label."""
        known = self.deadlines.get((info["Config"].get("Labels") or {}).get(self.ops.labels.workspace_id, ""))
        if known is not None and known.container_id == info["Id"]:
            return known
        return self.from_container(info)

    def _seen(self, info: JSON) -> datetime | None:
        """A workspace is being reported (made, adopted, inspected): its deadline, also noted
        for the expiry loop if it is new (a create's ``ttl_s``)."""
        deadline = self.of(info)
        if deadline is None:
            return None
        if self.deadlines.get(deadline.workspace_id) != deadline:
            self._put(deadline)
        return deadline.expires_at

    def _put(self, deadline: Deadline) -> None:
        self.deadlines[deadline.workspace_id] = deadline
        self.changed.set()

    def forget(self, workspace_id: str) -> None:
        """The workspace is gone (removed or expired for good)."""
        self.deadlines.pop(workspace_id, None)

    # --- Docker -----------------------------------------------------------------------------

    async def _leases(self, workspace_id: str | None = None) -> list[JSON]:
        names = self.ops.labels
        label = [
            *self.ops.host_label_filter(),
            names.lease_of if workspace_id is None else f"{names.lease_of}={workspace_id}",
        ]
        answer = await self.ops.call(
            "volume.list",
            lambda: handles.volumes(self.ops.docker).list(filters={"label": label}),
            subject=f"workspace leases on {self.ops.host_id}",
        )
        volumes = cast(list[JSON], (answer or {}).get("Volumes") or [])
        # The filter, checked again: a lease is only ever a volume this host made as one.
        return [v for v in volumes if self._is_lease(v.get("Labels") or {}, workspace_id)]

    def _is_lease(self, labels: dict[str, str], workspace_id: str | None) -> bool:
        of = labels.get(self.ops.labels.lease_of)
        mine = self.ops.labels.is_managed_by(labels, self.ops.host_id)
        return mine and bool(of) and (workspace_id is None or of == workspace_id)

    def _lease_deadline(self, volume: JSON, container: Deadline | None, info: JSON) -> Deadline | None:
        labels: dict[str, str] = volume.get("Labels") or {}
        names = self.ops.labels
        expires_at = parse_docker_time(labels.get(names.expires_at))
        if expires_at is None or labels.get(names.lease_container) != info["Id"]:
            return None
        action = container.action if container is not None else self._action(labels)
        return Deadline(labels.get(names.lease_of, ""), info["Id"], expires_at, action)

    async def scan(self) -> None:
        """Rebuild the deadlines from Docker: the containers' labels, then the leases."""
        began = time.monotonic()
        infos = await self.containers.inspect_each(await self.containers.list_managed())
        by_workspace = {
            (info["Config"].get("Labels") or {}).get(self.ops.labels.workspace_id, ""): info for info in infos
        }
        found: dict[str, Deadline] = {}
        for workspace_id, info in by_workspace.items():
            deadline = self.from_container(info)
            if deadline is not None:
                found[workspace_id] = deadline
        now = utcnow()
        leases = await self._leases()
        # Added to, never replaced: an extend made while the list was in flight must stay known.
        self._leased |= {(v.get("Labels") or {}).get(self.ops.labels.lease_of, "") for v in leases}
        self._scanned = True
        for volume in sorted(leases, key=lambda v: v.get("Name", "")):
            workspace_id = (volume.get("Labels") or {}).get(self.ops.labels.lease_of, "")
            container = by_workspace.get(workspace_id)
            lease = None if container is None else self._lease_deadline(volume, found.get(workspace_id), container)
            if lease is not None:
                found[workspace_id] = lease  # names sort by when they were made: the newest wins
        # Past its deadline and stopped already (expired before, or stopped by its owner): nothing
        # to do, and no reason to look at it on every turn. A start notes it again (see _seen).
        for workspace_id, deadline in list(found.items()):
            running = (by_workspace[workspace_id].get("State") or {}).get("Running")
            if deadline.expires_at <= now and deadline.action == "stop" and not running:
                del found[workspace_id]
        self.deadlines = found
        self.changed.set()
        log.debug("deadlines: %d workspaces, scanned in %.0f ms", len(found), (time.monotonic() - began) * 1000)

    async def extend(self, workspace_id: str, ttl_s: int) -> Workspace:
        """``workspace.extend``: the workspace now expires ``ttl_s`` seconds from now."""
        info = await self.containers.get(workspace_id)
        current = self.of(info)
        expires_at = utcnow() + timedelta(seconds=ttl_s)
        names = self.ops.labels
        # The name sorts by when the lease was made (milliseconds since the epoch): the newest
        # lease is the last, even when it moved the deadline earlier.
        name = f"{names.prefix}-lease-{workspace_id}-{int(time.time() * 1000):015d}"
        labels = {
            **self.ops.managed_labels(),
            names.lease_of: workspace_id,
            names.lease_container: info["Id"],
            names.expires_at: stamp(expires_at),
            names.on_expiry: current.action if current is not None else "stop",
        }
        subject = self.ops.subject(workspace_id)
        self._extends += 1
        self._leased.add(workspace_id)  # before it exists: a drop must not miss it
        await self.ops.call(
            "volume.create",
            lambda: handles.volumes(self.ops.docker).create({"Name": name, "Labels": labels}),
            subject=subject,
        )
        action: Action = current.action if current is not None else "stop"
        self._put(Deadline(workspace_id, info["Id"], expires_at, action))
        await self.drop_leases(workspace_id, keep=name)
        return self.containers.workspace(info)

    async def drop_leases(self, workspace_id: str, *, keep: str | None = None) -> None:
        """Remove the workspace's leases (but ``keep``); a failure is logged, the scan skips them.

        No Docker call for a workspace that has none: one no scan saw and no extend made."""
        if keep is None and self._scanned and workspace_id not in self._leased:
            return
        extends, left = self._extends, False
        for volume in await self._leases(workspace_id):
            name = volume.get("Name", "")
            if name == keep:
                continue
            try:
                await self.ops.call(
                    "volume.delete", handles.volume(self.ops.docker, name).delete, subject=f"lease {name}"
                )
            except Exception as exc:  # a stale lease is harmless: it names an older lease or container
                left = True
                log.warning("lease %s of workspace %s not removed: %s", name, workspace_id, exc)
        if keep is None and not left and extends == self._extends:
            self._leased.discard(workspace_id)
