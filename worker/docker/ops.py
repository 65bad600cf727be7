"""The facade: one object the handlers and the worker's loops hold, one attribute per resource."""

from __future__ import annotations

from functools import cached_property

from dockhand.schemas.commands import WorkspaceCreate, WorkspacePutFiles

from .calls import DockerCalls
from .containers import Containers
from .create import Creator
from .host import Host
from .images import Images
from .leases import Leases
from .networks import Networks
from .snapshots import Snapshots
from .volumes import Volumes
from .workspace_files import WorkspaceFiles
from .workspaces import Workspaces


class DockerOps(DockerCalls):
    """What the command handlers do to the Docker host: ``ops.workspaces.create(p)``,
    ``ops.networks.ensure(p)``, ``ops.images.pulled(...)``, ``ops.host.info()`` …

    The call path, availability and scope (``call``, ``maybe``, ``owns`` …) are
    :class:`DockerCalls`'; every resource makes its Docker calls through them.
    """

    # The resources, each made once, on first use (they hold state: pulls in flight, locks).
    containers = cached_property(Containers)  # workspace containers by id, shared by the others
    host = cached_property(Host)
    images = cached_property(Images)
    volumes = cached_property(Volumes)
    leases = cached_property(lambda ops: Leases(ops, ops.containers))
    snapshots = cached_property(lambda ops: Snapshots(ops, ops.containers, ops.images))
    networks = cached_property(lambda ops: Networks(ops, ops.containers))
    files = cached_property(lambda ops: WorkspaceFiles(ops, ops.containers))
    workspaces = cached_property(
        lambda ops: Workspaces(
            ops,
            ops.containers,
            ops.volumes,
            ops.leases,
            Creator(ops, ops.containers, ops.images, ops.networks, ops.volumes, ops.host, ops.snapshots),
        )
    )

    def check_create(self, p: WorkspaceCreate) -> WorkspaceCreate:
        """Policy for a create, before any Docker call; bind sources resolved."""
        return self.workspaces.check_create(p)

    def check_files(self, p: WorkspacePutFiles) -> None:
        """``rejected`` up front: files over DOCKHAND_MAX_FILE_BYTES."""
        self.files.check(p)
