"""Workspace containers, found by workspace id: the lookups every resource module shares."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError

from dockhand.schemas import ErrorCode
from dockhand.schemas.results import Workspace

from .. import tenancy
from ..errors import DockhandError
from . import models
from .calls import JSON, DockerCalls, Remembered

_INSPECTS_AT_ONCE = 16
_KNOWN = 4096  # workspace containers remembered (a few hundred bytes each)


@dataclass(frozen=True)
class Known:
    """What never changes for one container id: the id itself, its labels and its mounts."""

    id: str
    labels: dict[str, str]
    mounts: list[JSON]


class Containers:
    """Find, inspect, list and start the containers of workspaces."""

    def __init__(self, ops: DockerCalls) -> None:
        self.ops = ops
        self.deadline_of: Callable[[JSON], datetime | None] = lambda _info: None
        """A container's deadline (``ttl_s``), for its ``workspace``; the leases set it."""
        self.known: Remembered[str, Known] = Remembered(ops, _KNOWN, self._heard)
        """By workspace id: the container this worker last found (or made) under its name.

        Docker never changes a container's labels or mounts, so a command can check ownership on
        the remembered labels and act on the id without inspecting first. A name can move to
        another container: a 404 on the id (removed, maybe replaced) or a destroy or rename event
        forgets the entry, and the command inspects by name as before (see :meth:`remembered`)."""

        self.inspected: list[Callable[[JSON], None]] = []
        """Called with every container inspect made here (the networks note endpoints' aliases)."""

    def _heard(self, known: Remembered[str, Known], event: JSON) -> None:
        if event.get("Type") != "container" or event.get("Action") not in {"destroy", "rename"}:
            return
        actor = event.get("Actor") or {}
        workspace_id = (actor.get("Attributes") or {}).get(self.ops.labels.workspace_id)
        entry = known.get(workspace_id) if workspace_id else None
        if workspace_id and (entry is None or entry.id == actor.get("ID")):
            known.drop(workspace_id)

    def remembered(self, workspace_id: str) -> Known | None:
        """The workspace's container as last found, if remembered, after the same ownership
        check :meth:`find` makes (``forbidden`` when the sender may not touch it)."""
        entry = self.known.get(workspace_id)
        if entry is not None and not self.ops.owns(entry.labels):
            raise tenancy.forbidden(self.ops.subject(workspace_id))
        return entry

    def forget(self, workspace_id: str) -> None:
        """The workspace's container is gone (or may be): inspect by name next time."""
        self.known.drop(workspace_id)

    async def find(self, workspace_id: str) -> JSON | None:
        """Inspect the workspace's container; ``None`` when absent, ``forbidden`` when the
        name is taken by a container this host does not manage."""
        ops = self.ops
        name = ops.container_name(workspace_id)
        token = self.known.token()
        info = await ops.maybe(
            "container.inspect",
            lambda: ops.docker.containers.container(name).show(),
            subject=ops.subject(workspace_id),
        )
        if info is None:
            self.known.drop(workspace_id)
            return None
        for listener in self.inspected:
            listener(info)
        labels = info["Config"].get("Labels") or {}
        if not ops.labels.is_managed_by(labels, ops.host_id) or labels.get(ops.labels.workspace_id) != workspace_id:
            self.known.drop(workspace_id)
            raise DockhandError(
                ErrorCode.FORBIDDEN,
                f"container {name} on {ops.host_id} is not a workspace managed by this host; left untouched",
            )
        # Remembered whoever asks: what the sender may do with it is checked on every use.
        self.known.put(workspace_id, Known(info["Id"], dict(labels), list(info.get("Mounts") or [])), token)
        if not ops.owns(labels):
            # Before anything else looks at it: a create must not learn the spec (no conflict).
            raise tenancy.forbidden(ops.subject(workspace_id))
        return info

    async def get(self, workspace_id: str) -> JSON:
        """Like :meth:`find`, but an absent workspace is ``not_found``."""
        info = await self.find(workspace_id)
        if info is None:
            raise DockhandError(ErrorCode.NOT_FOUND, f"workspace {workspace_id} not found on {self.ops.host_id}")
        return info

    def workspace(self, info: JSON, *, created: bool | None = None) -> Workspace:
        """The contract's ``workspace`` object from a container inspect."""
        return models.workspace(
            info, self.ops.labels, self.ops.host_id, created=created, expires_at=self.deadline_of(info)
        )

    async def matching(self, filters: dict[str, list[str]], subject: str) -> list[DockerContainer]:
        """Containers (running or not) that match Docker's list ``filters``."""
        containers: list[DockerContainer] = await self.ops.call(
            "container.list",
            lambda: self.ops.docker.containers.list(all=True, filters=json.dumps(filters)),
            subject=subject,
        )
        return containers

    async def list_managed(self, **filters: list[str]) -> list[DockerContainer]:
        """This host's workspace containers (more ``filters`` narrow the list)."""
        label = [*self.ops.host_label_filter(), *filters.pop("label", [])]
        return await self.matching({"label": label, **filters}, f"workspaces on {self.ops.host_id}")

    async def inspect_each(self, containers: list[DockerContainer]) -> list[JSON]:
        """Inspect listed containers, a few at a time; one gone since the list is left out."""
        limit = asyncio.Semaphore(_INSPECTS_AT_ONCE)

        async def inspect(container: DockerContainer) -> Any:
            async with limit:
                return await self.ops.maybe("container.inspect", container.show, subject=f"container {container.id}")

        infos = [info for info in await asyncio.gather(*(inspect(c) for c in containers)) if info is not None]
        for info in infos:
            for listener in self.inspected:
                listener(info)
        return infos

    async def start(self, workspace_id: str, ref: str) -> None:
        """Start a workspace's container (by id or name)."""
        subject = self.ops.subject(workspace_id)
        try:
            await self.ops.call(
                "container.start",
                lambda: self.ops.docker.containers.container(ref).start(),
                subject=subject,
                refused="start",
            )
        except DockhandError as exc:
            if exc.code is not ErrorCode.NOT_FOUND or not isinstance(exc.__cause__, DockerError):
                raise
            # The container is there (it was just made or inspected): what is missing is
            # something it needs, such as its network. Say so, not "workspace not found".
            detail = exc.__cause__.message.strip() or "HTTP 404"
            raise DockhandError(ErrorCode.NOT_FOUND, f"{subject} cannot start: {detail}") from exc
