"""Named volumes: who may mount one, made by a create, removed with their workspace."""

from __future__ import annotations

from functools import partial

from dockhand.schemas import ErrorCode
from dockhand.schemas.commands import Mount, WorkspaceCreate

from .. import tenancy
from ..errors import DockhandError
from . import handles
from .calls import JSON, DockerCalls


class Volumes:
    """The named volumes of workspaces.

    A volume belongs to the workspace whose create made it (label ``workspace.id``); another
    workspace may mount it only if the creator shared it with a project (``share: "project"``)
    and that workspace is of the project. Anything else is ``forbidden``.
    """

    def __init__(self, ops: DockerCalls) -> None:
        self.ops = ops

    def _subject(self, name: str) -> str:
        return f"volume {name} on {self.ops.host_id}"

    async def check(self, p: WorkspaceCreate) -> list[Mount]:
        """Check every named volume of a create before anything is made; return those to create."""
        missing: list[Mount] = []
        seen: set[str] = set()
        for mount in p.mounts:
            if mount.type != "volume" or mount.source is None or mount.source in seen:
                continue
            seen.add(mount.source)
            subject = self._subject(mount.source)
            info = await self.ops.maybe(
                "volume.inspect", handles.volume(self.ops.docker, mount.source).show, subject=subject
            )
            if info is None:
                missing.append(mount)
            else:
                self.check_access(info.get("Labels") or {}, p, subject)
        return missing

    def check_access(self, labels: dict[str, str], p: WorkspaceCreate, subject: str) -> None:
        """``forbidden`` unless the workspace of ``p`` may mount a volume with these labels."""
        ops = self.ops
        if not ops.labels.is_managed_by(labels, ops.host_id):
            raise DockhandError(ErrorCode.FORBIDDEN, f"{subject} exists and is not managed by this host")
        if not ops.owns(labels):
            raise tenancy.forbidden(subject)
        if labels.get(ops.labels.workspace_id) == p.workspace_id:
            return
        shared = labels.get(ops.labels.volume_share) == "project" and labels.get(ops.labels.project)
        if shared and shared == p.project:
            return
        raise DockhandError(
            ErrorCode.FORBIDDEN,
            f"{subject} belongs to another workspace"
            + (f" and is shared only with its project, not {p.project or 'this workspace'}" if shared else "")
            + ' (a volume is shared only when its creator set share: "project")',
        )

    async def create(self, mounts: list[Mount], p: WorkspaceCreate, made: list[str]) -> None:
        """Create the volumes a create found missing; each one this create made goes on ``made``
        at once (to remove again if a later step fails)."""
        ops = self.ops
        for mount in mounts:
            name = mount.source or ""
            subject = self._subject(name)
            extra: dict[str, str | None] = {ops.labels.workspace_id: p.workspace_id}
            if mount.share == "project":
                extra |= {ops.labels.volume_share: "project", ops.labels.project: p.project}
            config = {"Name": name, "Labels": ops.managed_labels(**extra)}
            volume = await ops.call(
                "volume.create", partial(handles.volumes(ops.docker).create, config), subject=subject
            )
            # Docker answers a create of an existing name with that volume, labels and all: if
            # another create made it since the check, it is theirs, not ours.
            info: JSON = await ops.call("volume.inspect", volume.show, subject=subject)
            labels = info.get("Labels") or {}
            if labels.get(ops.labels.workspace_id) == p.workspace_id and labels.get(ops.labels.host) == ops.host_id:
                made.append(name)
            self.check_access(labels, p, subject)

    async def delete(self, name: str, subject: str) -> None:
        """Remove a volume (``conflict`` while a container uses it)."""
        await self.ops.call("volume.delete", handles.volume(self.ops.docker, name).delete, subject=subject)

    async def remove_own(self, name: str, workspace_id: str) -> None:
        """Remove a named volume only if this workspace's create made it (and it is unused)."""
        ops = self.ops
        subject = self._subject(name)
        info = await ops.maybe("volume.inspect", handles.volume(ops.docker, name).show, subject=subject)
        labels = (info or {}).get("Labels") or {}
        if (
            info
            and ops.labels.is_managed_by(labels, ops.host_id)
            and labels.get(ops.labels.workspace_id) == workspace_id
            and ops.owns(labels)
        ):
            try:
                await self.delete(name, subject)
            except DockhandError as exc:
                if exc.code is not ErrorCode.CONFLICT:  # still used by another workspace: keep it
                    raise
