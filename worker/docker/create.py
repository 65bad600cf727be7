"""``workspace.create``, all or nothing: everything is checked before anything is made, and
what the create then made (network, volumes, container) is removed again when a later step fails.
A create of a workspace that exists with the same spec adopts it; with another spec, ``conflict``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field

from dockhand.schemas import ErrorCode, Status
from dockhand.schemas.commands import Mount, NetworkEnsure, WorkspaceCreate
from dockhand.schemas.results import Workspace

from ..errors import DockhandError, rejected
from ..policy import binds_conflict
from .calls import JSON, DockerCalls
from .container_config import Target, container_config, published_ports, spec_hash
from .containers import Containers
from .host import Host
from .images import Images
from .models import listed
from .networks import Networks, egress_free
from .snapshots import Snapshots
from .volumes import Volumes

log = logging.getLogger("dockhand.docker")

_RW = " (only two read-only binds may nest: through a writable one a workspace can redirect the other with a symlink)"


@dataclass
class _Made:
    """What one create has made so far, to remove again if a later step fails."""

    network: str | None = None
    volumes: list[str] = field(default_factory=list)
    container: str | None = None

    def __bool__(self) -> bool:
        return bool(self.network or self.volumes or self.container)


@dataclass
class _Plan:
    """A checked create: the payload (bind sources resolved), its spec hash, image and binds."""

    p: WorkspaceCreate
    resolved: WorkspaceCreate
    wanted: str
    image: JSON
    subject: str

    @property
    def binds(self) -> list[tuple[str, bool]]:
        return [(m.source, m.read_only) for m in self.resolved.mounts if m.type == "bind" and m.source is not None]


@dataclass
class Creator:
    """Creates workspaces (see the module's docstring)."""

    ops: DockerCalls
    containers: Containers
    images: Images
    networks: Networks
    volumes: Volumes
    host: Host
    snapshots: Snapshots
    _bind_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    def check(self, p: WorkspaceCreate) -> WorkspaceCreate:
        """Policy for a create, before any Docker call. Returns the payload with each bind
        source replaced by its resolved host path (what Docker must be given)."""
        policy = self.ops.policy
        what = self.ops.subject(p.workspace_id)
        policy.check_image(p.image)
        policy.check_labels(p.labels, what)
        policy.check_capabilities(p.cap_add, what)
        if p.network is not None:
            policy.check_network_name(p.network, what)
        mounts: list[Mount] = []
        binds: list[tuple[str, bool]] = []
        for mount in p.mounts:
            if mount.type == "bind" and mount.source is not None:
                resolved = policy.check_bind(mount.source, what)
                # Within one create too: a restart re-resolves every source, after the
                # workspace could have planted a symlink through its own writable bind.
                for other, other_ro in binds:
                    if binds_conflict(resolved, mount.read_only, other, other_ro):
                        raise rejected(ErrorCode.FORBIDDEN, f"{what}: bind sources {other} and {resolved} nest{_RW}")
                binds.append((resolved, mount.read_only))
                mount = mount.model_copy(update={"source": resolved})
            mounts.append(mount)
        return p.model_copy(update={"mounts": mounts})

    async def create(self, p: WorkspaceCreate) -> Workspace:
        """Create (and start) a workspace, all or nothing.

        Everything is checked before anything is made (image, bind sources against the live
        mounts of this host, volume ownership, the network); what this create then makes —
        network, volumes, container — is removed again when a later step fails. A host at its
        DOCKHAND_MAX_WORKSPACES says ``capacity`` before any Docker call (see census.py).
        """
        resolved = self.check(p)
        census = self.ops.census
        if census.limit is not None and census.known is None:  # not yet read by the event stream
            census.replace({w.workspace_id for w in await self._listed()})
        with census.admit(p.workspace_id):
            workspace = await self._create(p, resolved)
        census.add(p.workspace_id)
        return workspace

    async def _listed(self) -> list[Workspace]:
        infos = await self.containers.inspect_each(await self.containers.list_managed())
        return [self.containers.workspace(info) for info in infos]

    async def _create(self, p: WorkspaceCreate, resolved: WorkspaceCreate) -> Workspace:
        wanted = spec_hash(p)
        existing = await self.containers.find(p.workspace_id) if self._may_exist(p.workspace_id) else None
        if existing is not None:
            return await self._adopt(existing, p, wanted)
        snapshot = self.ops.policy.is_snapshot(p.image)
        # A snapshot is never pulled (pull policy "never" implied), and must be this host's own.
        image = await self.images.ensure(p.image, "never" if snapshot else p.pull, p.registry_auth)
        if snapshot:
            await self.snapshots.check_use(p.image, image)
        subject = self.ops.subject(p.workspace_id)
        published_ports(p, image, subject)  # an image that exposes too much is refused before anything is made
        plan = _Plan(p, resolved, wanted, image, subject)
        # Bind-bearing creates one at a time: the check against the live mounts stays true
        # until the container (whose mounts the next check sees) exists.
        async with self._bind_lock if plan.binds else contextlib.nullcontext():
            await self._check_binds_live(plan.binds, subject, self.ops.container_name(p.workspace_id))
            missing_volumes = await self.volumes.check(p)
            network = p.network or self.ops.default_network(egress=p.egress)
            net = await self.networks.joinable(network, subject)
            if net is not None and not p.egress and not egress_free(net):
                raise DockhandError(
                    ErrorCode.FORBIDDEN,
                    f"{subject}: an egress-free workspace joins only an internal network this host made; "
                    f"{network} is not one",
                )
            async with self.networks.attach_lock(net["Name"] if net is not None else network):
                made = _Made()
                try:
                    net = net or await self._make_network(network, made, subject, internal=not p.egress)
                    adopted = await self._make(plan, net, missing_volumes, made)
                except BaseException:
                    await self._undo(made, subject)
                    raise
        if adopted is not None:
            return adopted
        if p.start:
            try:
                await self.containers.start(p.workspace_id, made.container or "")
            except BaseException as exc:
                if isinstance(exc, DockhandError) and exc.code is ErrorCode.NOT_FOUND:
                    self.networks.facts.clear()  # its network may be gone since it was looked at
                # A container that cannot start is removed with what came with it (never an
                # adopted one: that path returned above).
                async with self.networks.attach_lock(net["Name"]):
                    await self._undo(made, subject)
                raise
        return self.containers.workspace(await self.containers.get(p.workspace_id), created=True)

    def _may_exist(self, workspace_id: str) -> bool:
        """Whether the workspace may exist, so that the create looks first.

        Not when the census, kept by the connected event stream (a list at each connect, then
        every create and destroy event, and this worker's own creates and removes), has no such
        workspace: then nothing is inspected first. Should a container hold the name after all
        (not managed by this host, or made a moment ago elsewhere), the create of the container
        is refused with 409 and :meth:`_make` finds it then, with the same checks: ``forbidden``,
        adopt or ``conflict``, and what this create made removed again."""
        census = self.ops.census
        return not (self.ops.watching and census.known is not None and workspace_id not in census.known)

    async def _make_network(self, network: str, made: _Made, subject: str, *, internal: bool) -> JSON:
        ensured = await self.networks.ensure(NetworkEnsure(name=network, internal=internal))
        if ensured.created:
            made.network = ensured.network_id
        # By id from here on: a name can be briefly ambiguous (see Networks._deduplicate).
        net = await self.networks.joinable(ensured.network_id, subject)
        if net is None:
            raise DockhandError(ErrorCode.CONFLICT, f"{subject}: network {network} vanished")
        if internal and not egress_free(net):  # made meanwhile by someone else, with egress
            raise DockhandError(ErrorCode.FORBIDDEN, f"{subject}: network {network} is not egress-free")
        return net

    async def _make(self, plan: _Plan, net: JSON, missing_volumes: list[Mount], made: _Made) -> Workspace | None:
        """Make the volumes and the container (its id goes on ``made``); a workspace adopted
        instead when a create of the same workspace won the race (then ``made`` is emptied)."""
        p, ops, name = plan.p, self.ops, self.ops.container_name(plan.p.workspace_id)
        # A container already named like this one is left out: the create below cannot make a
        # second one with that name (409), and it goes the adopt way (or is refused) instead.
        await self.networks.check_aliases(
            net, [p.workspace_id, name], None, plan.subject, workspaces=False, own_name=name
        )
        await self.volumes.create(missing_volumes, p, made.volumes)
        # The network's name, not the reference the sender used (an id, say): discovery
        # matches the dockhand.network label against the container's network names.
        target = Target(net["Name"], net["Id"], await self.host.cpu_cap(), ops.managed_labels(), plan.wanted)
        config = container_config(plan.resolved, plan.image, ops.settings, ops.labels, target)
        try:
            container = await ops.call(
                "container.create",
                lambda: ops.docker.containers.create(config, name=name),
                subject=plan.subject,
                not_found=ErrorCode.IMAGE_NOT_FOUND,
                refused="create",
            )
        except DockhandError as exc:
            # Lost a race with another create of the same workspace (or a crash left the
            # container behind): adopt it if it is the same spec. What this create made is
            # then the other one's too: keep it.
            existing = await self.containers.find(p.workspace_id) if exc.code is ErrorCode.CONFLICT else None
            if existing is None:
                raise
            made.network, made.volumes, made.container = None, [], None
            return await self._adopt(existing, p, plan.wanted)
        made.container = container.id
        return None

    async def _adopt(self, info: JSON, p: WorkspaceCreate, wanted: str) -> Workspace:
        labels = info["Config"].get("Labels") or {}
        if labels.get(self.ops.labels.spec_hash) != wanted:
            raise DockhandError(
                ErrorCode.CONFLICT,
                f"workspace {p.workspace_id} already exists on {self.ops.host_id} with a different spec",
            )
        if p.start and not (info.get("State") or {}).get("Running"):
            await self.containers.start(p.workspace_id, info["Id"])
            info = await self.containers.get(p.workspace_id)
        return self.containers.workspace(info, created=False)

    async def _undo(self, made: _Made, subject: str) -> None:
        """Best effort: remove what a failed create made (the container first, then its volumes
        and the network if it is still empty). Never raises; what is left is logged."""
        left: list[str] = []
        if made.container is not None:
            container = self.ops.docker.containers.container(made.container)
            try:
                await self.ops.call("container.delete", lambda: container.delete(force=True), subject=subject)
            except DockhandError as exc:
                left.append(f"container {made.container[:12]} ({exc.code.value})")
        for volume_name in made.volumes:
            try:
                await self.volumes.delete(volume_name, subject)
            except DockhandError as exc:
                left.append(f"volume {volume_name} ({exc.code.value})")
        if made.network is not None:
            try:
                await self.networks.delete_if_empty(made.network, subject)
            except DockhandError as exc:
                left.append(f"network {made.network[:12]} ({exc.code.value})")
        if left:
            log.warning("%s: a failed create left %s behind", subject, ", ".join(left))
        elif made:
            log.info("%s: removed what the failed create had made", subject)

    async def _check_binds_live(self, binds: list[tuple[str, bool]], subject: str, own_name: str) -> None:
        """Refuse binds that nest with a bind of any workspace on this Docker host, of any
        worker (unless both are read-only; see :func:`worker.policy.binds_conflict`), or with
        Docker's data directory (where every volume is writable by the workspaces that mount it).

        Only workspaces count: they are what senders control. Containers the operator runs
        outside dockhand are the operator's (an agent binding ``/`` read-only must not block
        every writable bind). A container named ``own_name`` is left out: it is this workspace
        (the create adopts it) or holds its name (the create is refused), never both at once."""
        if not binds:
            return
        root = await self.host.docker_root()
        containers = await self.containers.matching(
            {"label": [f"{self.ops.labels.managed}=true"]}, f"workspaces on {self.ops.host_id}"
        )
        others = [
            (container.id, mount["Source"], not mount.get("RW", True))
            for container in containers
            if f"/{own_name}" not in (listed(container, "Names", None) or [])
            for mount in listed(container, "Mounts", [])
            if mount.get("Type") == "bind" and mount.get("Source")
        ]
        # Through realpath: a container made outside dockhand may name a symlink.
        real = await asyncio.to_thread(lambda: [os.path.realpath(source) for _, source, _ in others])
        for source, read_only in binds:
            if root is not None and (source == root or binds_conflict(source, False, root, False)):
                raise DockhandError(
                    ErrorCode.FORBIDDEN,
                    f"{subject}: bind source {source} overlaps Docker's data directory {root}",
                    status=Status.REJECTED,
                )
            for (container_id, _, other_ro), other in zip(others, real, strict=True):
                if binds_conflict(source, read_only, other, other_ro):
                    raise DockhandError(
                        ErrorCode.FORBIDDEN,
                        f"{subject}: bind source {source} nests with {other}, bound by container "
                        f"{container_id[:12]}{_RW}",
                    )
