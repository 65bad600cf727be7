"""Workspace containers, found by workspace id: the lookups every resource module shares."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError

from dockhand.schemas import ErrorCode
from dockhand.schemas.results import Workspace

from .. import tenancy
from ..errors import DockhandError
from . import models
from .calls import JSON, DockerCalls

_INSPECTS_AT_ONCE = 16


class Containers:
    """Find, inspect, list and start the containers of workspaces."""

    def __init__(self, ops: DockerCalls) -> None:
        self.ops = ops
        self.deadline_of: Callable[[JSON], datetime | None] = lambda _info: None
        """A container's deadline (``ttl_s``), for its ``workspace``; the leases set it."""

    async def find(self, workspace_id: str) -> JSON | None:
        """Inspect the workspace's container; ``None`` when absent, ``forbidden`` when the
        name is taken by a container this host does not manage."""
        ops = self.ops
        name = ops.container_name(workspace_id)
        info = await ops.maybe(
            "container.inspect",
            lambda: ops.docker.containers.container(name).show(),
            subject=ops.subject(workspace_id),
        )
        if info is None:
            return None
        labels = info["Config"].get("Labels") or {}
        if not ops.labels.is_managed_by(labels, ops.host_id) or labels.get(ops.labels.workspace_id) != workspace_id:
            raise DockhandError(
                ErrorCode.FORBIDDEN,
                f"container {name} on {ops.host_id} is not a workspace managed by this host; left untouched",
            )
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

        return [info for info in await asyncio.gather(*(inspect(c) for c in containers)) if info is not None]

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
