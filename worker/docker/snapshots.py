"""Snapshots (contract v1.1 ``workspace.snapshot``, ``image.remove``): a workspace committed to an
image this host marks as its own, which ``workspace.create`` takes as its ``image``.

A snapshot is named ``<DOCKHAND_SNAPSHOT_REPOSITORY>/<workspace_id>:<tag>`` and labelled managed
by this host (and owned by the sender, under tenancy), with the workspace it was taken of.
Docker pauses the container while it commits (kept: the files are then consistent). The image
inherits the container's labels, so the workspace's own (id, deadline …) are emptied on it: a
workspace made from a snapshot is a new workspace, not the old one's deadline or identity.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import aiohttp

from dockhand.schemas import ErrorCode, utcnow
from dockhand.schemas.commands import WorkspaceSnapshot
from dockhand.schemas.results import ImageRemoved, SnapshotMade

from .. import tenancy
from ..errors import DockhandError
from .calls import JSON, DockerCalls
from .containers import Containers
from .images import Images

_COMMIT_TIMEOUT_S = 600.0  # aiodocker's commit has none by default; a large workspace takes minutes


class Snapshots:
    """Commit workspaces to images; remove those images again (and only those)."""

    def __init__(self, ops: DockerCalls, containers: Containers, images: Images) -> None:
        self.ops = ops
        self.containers = containers
        self.images = images

    def is_ours(self, labels: dict[str, str] | None) -> bool:
        """Whether an image's labels say this host made it as a snapshot."""
        labels = labels or {}
        return self.ops.labels.is_managed_by(labels, self.ops.host_id) and bool(labels.get(self.ops.labels.snapshot_of))

    async def make(self, p: WorkspaceSnapshot) -> SnapshotMade:
        """``workspace.snapshot``."""
        info = await self.containers.get(p.workspace_id)
        names = self.ops.labels
        now = utcnow()
        tag = p.tag or now.strftime("%Y%m%dT%H%M%S%fZ")
        repository = f"{self.ops.settings.snapshot_repository}/{p.workspace_id}"
        own: dict[str, str] = info["Config"].get("Labels") or {}
        labels = {key: "" for key in own if names.reserved(key)}  # the workspace's own, emptied
        labels.update(self.ops.managed_labels())
        labels[names.snapshot_of] = p.workspace_id
        labels[names.created] = now.isoformat().replace("+00:00", "Z")
        container = self.ops.docker.containers.container(info["Id"])

        async def commit() -> Any:
            return await container.commit(
                repository=repository,
                tag=tag,
                config={"Labels": labels},
                pause=True,
                timeout=aiohttp.ClientTimeout(total=_COMMIT_TIMEOUT_S),
            )

        try:
            made: JSON = await self.ops.call("container.commit", commit, subject=self.ops.subject(p.workspace_id))
        finally:
            self.images.facts.clear()  # the tag may have meant another image
        return SnapshotMade(workspace_id=p.workspace_id, image=f"{repository}:{tag}", image_id=str(made.get("Id", "")))

    async def check_use(self, image: str, info: JSON) -> None:
        """A create from a snapshot: only from this host's own (and, under tenancy, the sender's)."""
        labels = (info.get("Config") or {}).get("Labels") or {}
        if not self.is_ours(labels):
            raise DockhandError(
                ErrorCode.FORBIDDEN,
                f"image {image} on {self.ops.host_id} is named as a snapshot but is not one this host made",
            )
        if not self.ops.owns(labels):
            raise tenancy.forbidden(f"snapshot {image} on {self.ops.host_id}")

    async def remove(self, image: str) -> ImageRemoved:
        """``image.remove``: a snapshot of this host's; in use by a container: ``conflict``."""
        info = await self.images.find(image)
        if info is None:
            return ImageRemoved(image=image, removed=False)
        labels = (info.get("Config") or {}).get("Labels") or {}
        subject = f"image {image} on {self.ops.host_id}"
        if not self.is_ours(labels):
            raise DockhandError(
                ErrorCode.FORBIDDEN, f"{subject} was not made by this host; only its snapshots can be removed"
            )
        if not self.ops.owns(labels):
            raise tenancy.forbidden(subject)
        path_safe = urllib.parse.quote(image, safe="/:@")
        try:
            await self.ops.call("image.delete", lambda: self.ops.docker.images.delete(path_safe), subject=subject)
        except DockhandError as exc:
            self.images.facts.clear()
            if exc.code is ErrorCode.CONFLICT:
                raise DockhandError(ErrorCode.CONFLICT, f"{subject} is used by a workspace; remove that first") from exc
            raise
        self.images.facts.clear()
        return ImageRemoved(image=image, removed=True)
