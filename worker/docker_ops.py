"""Docker operations on managed workspaces, networks and images, through aiodocker.

Every Docker call goes through :meth:`DockerOps.call`, the one place that retries transient
failures (bounded, jittered) and maps errors to contract codes. Only containers, networks and
volumes carrying this host's managed labels are changed; anything else is ``forbidden``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import tarfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import aiodocker
import aiohttp
import stamina
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError
from aiodocker.networks import DockerNetwork
from aiodocker.volumes import DockerVolume

from dockhand.schemas import ErrorCode, RegistryAuth, Status, utcnow
from dockhand.schemas.commands import (
    MAX_PORTS,
    Mount,
    NetworkEnsure,
    WorkspaceCreate,
    WorkspaceExec,
    WorkspaceGetFile,
    WorkspaceListQuery,
    WorkspaceLogs,
    WorkspacePutFiles,
    WorkspaceRemove,
    WorkspaceStop,
    base64_decoded_size,
)
from dockhand.schemas.results import (
    ExecOutput,
    FileContent,
    FilesWritten,
    HostInfo,
    ImageInfo,
    ImagePulled,
    LogLines,
    NetworkAttachment,
    NetworkEnsured,
    NetworkRemoved,
    PortBinding,
    Workspace,
    WorkspaceList,
    WorkspaceRemoved,
)

from . import exec_kill, exec_stream, files, tenancy
from .errors import DockhandError, from_exception, is_transient, rejected
from .labels import Labels
from .policy import Policy, binds_conflict, explicit_registry, image_registry
from .settings import Settings
from .telemetry import Telemetry

log = logging.getLogger("dockhand.docker")

T = TypeVar("T")
JSON = dict[str, Any]

_NEVER = "0001-01-01T00:00:00Z"
_RW = " (only two read-only binds may nest: through a writable one a workspace can redirect the other with a symlink)"

NANO_CPUS_MIN = 10_000_000  # Docker's smallest CPU limit, 0.01 CPU


def ulimits(specs: list[str]) -> list[JSON]:
    """DOCKHAND_ULIMITS items (``name=soft[:hard]``, validated by the settings) in Docker's form."""
    out: list[JSON] = []
    for spec in specs:
        name, _, limits = spec.partition("=")
        soft, _, hard = limits.partition(":")
        out.append({"Name": name, "Soft": int(soft), "Hard": int(hard or soft)})
    return out


@dataclass
class _Made:
    """What one create has made so far, to remove again if a later step fails."""

    network: str | None = None
    volumes: list[str] = field(default_factory=list)
    container: str | None = None

    def __bool__(self) -> bool:
        return bool(self.network or self.volumes or self.container)


def parse_docker_time(value: str | None) -> datetime | None:
    """Docker's RFC 3339 times carry nanoseconds; Python takes microseconds."""
    if not value or value.startswith(_NEVER[:10]):
        return None
    head, dot, rest = value.partition(".")
    if dot:
        # Only the fraction's leading digits: an offset such as "+02:00" has digits too.
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        zone = rest[len(digits) :]
        value = f"{head}.{digits[:6]}{zone}"
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.astimezone(UTC)


def _listed(container: DockerContainer, key: str, default: Any) -> Any:
    """A field of a container-list entry (DockerContainer has item access but no ``get``)."""
    return container[key] if key in container else default  # noqa: SIM401


def spec_hash(payload: WorkspaceCreate) -> str:
    """A stable hash of what defines a workspace; how it is pulled or started does not count."""
    spec = payload.model_dump(mode="json", exclude={"pull", "registry_auth", "start"})
    # Fields added after v1 count only when set: a workspace made by an older worker keeps its
    # hash, so re-sending its unchanged create still adopts it instead of a ``conflict``.
    for mount in spec.get("mounts") or []:
        if mount.get("share") == "none":
            del mount["share"]
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class DockerOps:
    """What the command handlers do to the Docker host."""

    def __init__(
        self,
        docker: aiodocker.Docker,
        settings: Settings,
        labels: Labels,
        policy: Policy,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.docker = docker
        self.telemetry = telemetry or Telemetry(settings.host_id)
        self.settings = settings
        self.labels = labels
        self.policy = policy
        self.host_id = settings.host_id
        self._pulls: dict[tuple[str, str | None], asyncio.Future[None]] = {}
        self._network_locks: dict[str, asyncio.Lock] = {}
        self._attach_locks: dict[str, asyncio.Lock] = {}
        self._bind_lock = asyncio.Lock()
        self._docker_root_dir: str | None = None
        self._host_cpus: int | None = None
        # Whether Docker answers: the health probe, the event stream and every call keep it
        # current (see mark_available / mark_unavailable); while off, calls fail fast.
        self.available = True
        self._answered_at = 0.0  # monotonic time of the latest proof that Docker answers
        self._availability_listeners: list[Callable[[bool], None]] = []
        self._recheck: asyncio.Future[bool] | None = None

    # --- the one call path ---------------------------------------------------------------

    async def call(
        self,
        operation: str,
        fn: Callable[[], Awaitable[T]],
        *,
        subject: str,
        not_found: ErrorCode = ErrorCode.NOT_FOUND,
        pulling: bool = False,
    ) -> T:
        """Run one Docker API call: retry transient failures, map the rest to a contract code.

        ``operation`` is a low-cardinality name (``container.create``) for logs and spans.
        While the daemon is marked down, calls fail fast (``docker_unavailable``) unless one shared
        quick check (:meth:`recheck`) finds it answering again: then the call goes ahead.
        """
        if not self.available and not await self.recheck():
            raise DockhandError(
                ErrorCode.DOCKER_UNAVAILABLE, f"{subject}: Docker daemon unreachable on {self.host_id}", retryable=True
            )
        try:
            with self.telemetry.docker_call(operation, subject):
                attempts = self.settings.docker_retry_attempts
                # The first attempt goes straight through: the retry machinery costs more than
                # a fast Docker call, and is only needed once something failed. (Under
                # stamina's testing mode the tests decide the attempts: all go through it.)
                if not stamina.is_testing():
                    try:
                        result = await fn()
                        self.mark_available()
                        return result
                    except Exception as first:
                        if not is_transient(first) or attempts < 2:
                            raise
                    attempts -= 1
                async for attempt in stamina.retry_context(
                    on=is_transient, attempts=attempts, timeout=self.settings.docker_retry_timeout_s
                ):
                    with attempt:
                        result = await fn()
                        self.mark_available()
                        return result
        except Exception as exc:
            if isinstance(exc, DockerError) and 400 <= exc.status < 500:
                self.mark_available()  # the daemon answered (a 404, a 409): it is up (900: no connection)
            raise from_exception(exc, subject=subject, not_found=not_found, pulling=pulling) from exc
        raise AssertionError("unreachable: stamina yields at least one attempt")  # pragma: no cover

    # --- availability ----------------------------------------------------------------------

    def on_availability(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(available)`` whenever availability flips (health wakes, the event
        reader skips its backoff)."""
        self._availability_listeners.append(listener)

    def mark_available(self) -> None:
        """Docker just answered: available at once, whatever the last probe said."""
        self._answered_at = time.monotonic()
        if not self.available:
            log.info("docker available again")
            self._set_available(True)

    def mark_unavailable(self, began: float) -> bool:
        """A request begun at ``began`` (monotonic) found Docker unreachable. Ignored (``False``)
        when Docker answered after that request began: a stale failure must not override a
        fresher success (a probe sent just before the daemon came back, failing just after)."""
        if self._answered_at >= began:
            return False
        if self.available:
            self._set_available(False)
        return True

    def _set_available(self, value: bool) -> None:
        self.available = value
        for listener in self._availability_listeners:
            listener(value)

    async def recheck(self) -> bool:
        """Whether Docker answers now (``/version``, at most 1 s), asked once for all callers that
        wait at the same time; marks availability either way."""
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.ensure_future(self._ping())
        # shield: one caller giving up (cancelled) does not cancel the others' check.
        return await asyncio.shield(self._recheck)

    async def _ping(self) -> bool:
        began = time.monotonic()
        try:
            async with asyncio.timeout(1.0):
                await self.docker.version()
        except Exception:
            self.mark_unavailable(began)
            return False
        self.mark_available()
        return True

    async def maybe(self, operation: str, fn: Callable[[], Awaitable[T]], *, subject: str) -> T | None:
        """Like :meth:`call`, but a 404 means "absent" and returns ``None``."""
        try:
            return await self.call(operation, fn, subject=subject)
        except DockhandError as exc:
            if exc.code is ErrorCode.NOT_FOUND and isinstance(exc.__cause__, DockerError):
                return None
            raise

    # --- naming and scope ----------------------------------------------------------------

    def container_name(self, workspace_id: str) -> str:
        return f"{self.settings.container_name_prefix}{workspace_id}"

    def _subject(self, workspace_id: str) -> str:
        return f"workspace {workspace_id} on {self.host_id}"

    def _host_label_filter(self) -> list[str]:
        return [f"{self.labels.managed}=true", f"{self.labels.host}={self.host_id}"]

    def _managed_labels(self, **extra: str | None) -> dict[str, str]:
        labels = {self.labels.managed: "true", self.labels.host: self.host_id}
        sender = tenancy.current()
        if sender is not None:
            # Tenancy: whatever a command creates belongs to its sender.
            labels[self.labels.owner] = sender.user
        labels.update({k: v for k, v in extra.items() if v is not None})
        return labels

    def owns(self, labels: dict[str, str] | None) -> bool:
        """Whether the running command may touch (or see) an object with these labels.

        Always with tenancy off, for the worker itself and for admins; otherwise only an object
        this host manages whose owner label is the sender (unowned objects are nobody's).
        """
        sender = tenancy.restricted()
        if sender is None:
            return True
        labels = labels or {}
        return self.labels.is_managed_by(labels, self.host_id) and labels.get(self.labels.owner) == sender.user

    def default_network(self) -> str:
        """The network a workspace joins when it names none.

        With tenancy on, each owner gets its own (``<default>-<owner slug>``): one shared default
        network would let every tenant's workspaces reach each other.
        """
        sender = tenancy.current()
        if sender is None:
            return self.settings.default_network
        return f"{self.settings.default_network}-{tenancy.owner_slug(sender.user)}"

    async def find_workspace(self, workspace_id: str) -> JSON | None:
        """Inspect the workspace's container; ``None`` when absent, ``forbidden`` when the
        name is taken by a container this host does not manage."""
        name = self.container_name(workspace_id)
        info = await self.maybe(
            "container.inspect",
            lambda: self.docker.containers.container(name).show(),
            subject=self._subject(workspace_id),
        )
        if info is None:
            return None
        labels = info["Config"].get("Labels") or {}
        if not self.labels.is_managed_by(labels, self.host_id) or labels.get(self.labels.workspace_id) != workspace_id:
            raise DockhandError(
                ErrorCode.FORBIDDEN,
                f"container {name} on {self.host_id} is not a workspace managed by this host; left untouched",
            )
        if not self.owns(labels):
            # Before anything else looks at it: a create must not learn the spec (no conflict).
            raise tenancy.forbidden(self._subject(workspace_id))
        return info

    async def get_workspace(self, workspace_id: str) -> JSON:
        info = await self.find_workspace(workspace_id)
        if info is None:
            raise DockhandError(ErrorCode.NOT_FOUND, f"workspace {workspace_id} not found on {self.host_id}")
        return info

    def workspace(self, info: JSON, *, created: bool | None = None) -> Workspace:
        """The contract's ``workspace`` object from a container inspect."""
        labels: dict[str, str] = info["Config"].get("Labels") or {}
        state = info.get("State") or {}
        network_settings = info.get("NetworkSettings") or {}
        ports = [
            PortBinding(
                container_port=int(port.split("/")[0]),
                protocol=port.split("/")[1] if "/" in port else "tcp",
                host_ip=binding.get("HostIp", ""),
                host_port=int(binding["HostPort"]),
            )
            for port, bindings in sorted((network_settings.get("Ports") or {}).items())
            for binding in bindings or []
            if binding.get("HostPort")
        ]
        networks = {
            name: endpoint.get("IPAddress") or ""
            for name, endpoint in sorted((network_settings.get("Networks") or {}).items())
        }
        health = (state.get("Health") or {}).get("Status")
        return Workspace(
            workspace_id=labels.get(self.labels.workspace_id, ""),
            name=labels.get(self.labels.workspace_name),
            container_id=info["Id"],
            container_name=info["Name"].lstrip("/"),
            host_id=self.host_id,
            image=info["Config"].get("Image", ""),
            image_id=info.get("Image", ""),
            state=state.get("Status", "unknown"),
            health=health,
            created=created,
            ports=ports,
            networks=networks,
            labels=labels,
            # An empty value is an image's label we overrode (see _inherited_labels): not set.
            project=labels.get(self.labels.project) or None,
            stage=labels.get(self.labels.stage) or None,
            owner=labels.get(self.labels.owner) or None,
            created_at=parse_docker_time(info.get("Created")),
            started_at=parse_docker_time(state.get("StartedAt")),
        )

    # --- workspaces ----------------------------------------------------------------------

    def check_create(self, p: WorkspaceCreate) -> WorkspaceCreate:
        """Policy for a create, before any Docker call. Returns the payload with each bind
        source replaced by its resolved host path (what Docker must be given)."""
        what = self._subject(p.workspace_id)
        self.policy.check_image(p.image)
        self.policy.check_labels(p.labels, what)
        self.policy.check_capabilities(p.cap_add, what)
        if p.network is not None:
            self.policy.check_network_name(p.network, what)
        mounts: list[Mount] = []
        binds: list[tuple[str, bool]] = []
        for mount in p.mounts:
            if mount.type == "bind" and mount.source is not None:
                resolved = self.policy.check_bind(mount.source, what)
                # Within one create too: a restart re-resolves every source, after the
                # workspace could have planted a symlink through its own writable bind.
                for other, other_ro in binds:
                    if binds_conflict(resolved, mount.read_only, other, other_ro):
                        raise rejected(ErrorCode.FORBIDDEN, f"{what}: bind sources {other} and {resolved} nest{_RW}")
                binds.append((resolved, mount.read_only))
                mount = mount.model_copy(update={"source": resolved})
            mounts.append(mount)
        return p.model_copy(update={"mounts": mounts})

    async def create_workspace(self, p: WorkspaceCreate) -> Workspace:
        """Create (and start) a workspace, all or nothing.

        Everything is checked before anything is made (image, bind sources against the live
        mounts of this host, volume ownership, the network); what this create then makes —
        network, volumes, container — is removed again when a later step fails.
        """
        resolved = self.check_create(p)
        subject = self._subject(p.workspace_id)
        wanted = spec_hash(p)
        existing = await self.find_workspace(p.workspace_id)
        if existing is not None:
            return await self._adopt(existing, p, wanted)

        image = await self.ensure_image(p.image, p.pull, p.registry_auth)
        self.published_ports(p, image)  # an image that exposes too much is refused before anything is made
        network = p.network or self.default_network()
        binds = [(m.source, m.read_only) for m in resolved.mounts if m.type == "bind" and m.source is not None]
        made = _Made()
        name = self.container_name(p.workspace_id)
        # Bind-bearing creates one at a time: the check against the live mounts stays true
        # until the container (whose mounts the next check sees) exists.
        async with self._bind_lock if binds else contextlib.nullcontext():
            await self._check_binds_live(binds, subject)
            missing_volumes = await self._check_volumes(p)
            net = await self._joinable_network(network, subject)
            async with self._attach_lock(net["Name"] if net is not None else network):
                try:
                    if net is None:
                        ensured = await self.ensure_network(NetworkEnsure(name=network))
                        if ensured.created:
                            made.network = ensured.network_id
                        # By id from here on: a name can be briefly ambiguous (see _deduplicate_network).
                        net = await self._joinable_network(ensured.network_id, subject)
                        if net is None:
                            raise DockhandError(ErrorCode.CONFLICT, f"{subject}: network {network} vanished")
                    await self._check_aliases(net, [p.workspace_id, name], None, subject, workspaces=False)
                    await self._create_volumes(missing_volumes, p, made)
                    # The network's name, not the reference the sender used (an id, say): discovery
                    # matches the dockhand.network label against the container's network names.
                    config = self._container_config(
                        resolved, image, wanted, net["Name"], await self._cpu_cap(), net["Id"]
                    )
                    try:
                        container = await self._refused_is_invalid(
                            self.call(
                                "container.create",
                                lambda: self.docker.containers.create(config, name=name),
                                subject=subject,
                                not_found=ErrorCode.IMAGE_NOT_FOUND,
                            ),
                            "create",
                        )
                    except DockhandError as exc:
                        # Lost a race with another create of the same workspace (or a crash left
                        # the container behind): adopt it if it is the same spec. What this
                        # create made is then the other one's too: keep it.
                        existing = await self.find_workspace(p.workspace_id) if exc.code is ErrorCode.CONFLICT else None
                        if existing is None:
                            raise
                        made = _Made()
                        return await self._adopt(existing, p, wanted)
                    made.container = container_id = container.id
                except BaseException:
                    await self._undo(made, subject)
                    raise
        if p.start:
            try:
                await self._start(p.workspace_id, container_id)
            except BaseException:
                # A container that cannot start is removed with what came with it (never an
                # adopted one: that path returned above).
                async with self._attach_lock(net["Name"]):
                    await self._undo(made, subject)
                raise
        return self.workspace(await self.get_workspace(p.workspace_id), created=True)

    async def _undo(self, made: _Made, subject: str) -> None:
        """Best effort: remove what a failed create made (the container first, then its volumes
        and the network if it is still empty). Never raises; what is left is logged."""
        left: list[str] = []
        if made.container is not None:
            container = self.docker.containers.container(made.container)
            try:
                await self.call("container.delete", lambda: container.delete(force=True), subject=subject)
            except DockhandError as exc:
                left.append(f"container {made.container[:12]} ({exc.code.value})")
        for volume_name in made.volumes:
            try:
                await self.call("volume.delete", DockerVolume(self.docker, volume_name).delete, subject=subject)
            except DockhandError as exc:
                left.append(f"volume {volume_name} ({exc.code.value})")
        if made.network is not None:
            network = DockerNetwork(self.docker, made.network)
            try:
                info = await self.maybe("network.inspect", network.show, subject=subject)
                if info is not None and not info.get("Containers"):
                    await self.call("network.delete", network.delete, subject=subject)
            except DockhandError as exc:
                left.append(f"network {made.network[:12]} ({exc.code.value})")
        if left:
            log.warning("%s: a failed create left %s behind", subject, ", ".join(left))
        elif made:
            log.info("%s: removed what the failed create had made", subject)

    async def _refused_is_invalid(self, call: Awaitable[T], what: str) -> T:
        """Docker's create/start refusals are answers about the request (a port protocol it
        cannot publish, a mount it cannot make), not worker faults: ``invalid_command``."""
        try:
            return await call
        except DockhandError as exc:
            if exc.code is not ErrorCode.INTERNAL or not isinstance(exc.__cause__, DockerError):
                raise
            raise DockhandError(
                ErrorCode.INVALID_COMMAND, exc.message.replace("Docker error:", f"Docker refused to {what} it:")
            ) from exc

    async def _check_binds_live(self, binds: list[tuple[str, bool]], subject: str) -> None:
        """Refuse binds that nest with a bind of any workspace on this Docker host, of any
        worker (unless both are read-only; see :func:`worker.policy.binds_conflict`), or with
        Docker's data directory (where every volume is writable by the workspaces that mount it).

        Only workspaces count: they are what senders control. Containers the operator runs
        outside dockhand are the operator's (an agent binding ``/`` read-only must not block
        every writable bind)."""
        if not binds:
            return
        root = await self._docker_root()
        containers: list[DockerContainer] = await self.call(
            "container.list",
            lambda: self.docker.containers.list(
                all=True, filters=json.dumps({"label": [f"{self.labels.managed}=true"]})
            ),
            subject=f"workspaces on {self.host_id}",
        )
        others = [
            (container.id, mount["Source"], not mount.get("RW", True))
            for container in containers
            for mount in _listed(container, "Mounts", [])
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

    async def _docker_root(self) -> str | None:
        if self._docker_root_dir is None:
            info = await self.call("system.info", self.docker.system.info, subject=f"host {self.host_id}")
            root = info.get("DockerRootDir")
            self._docker_root_dir = await asyncio.to_thread(os.path.realpath, root) if root else ""
        return self._docker_root_dir or None

    async def _adopt(self, info: JSON, p: WorkspaceCreate, wanted: str) -> Workspace:
        labels = info["Config"].get("Labels") or {}
        if labels.get(self.labels.spec_hash) != wanted:
            raise DockhandError(
                ErrorCode.CONFLICT,
                f"workspace {p.workspace_id} already exists on {self.host_id} with a different spec",
            )
        if p.start and not (info.get("State") or {}).get("Running"):
            await self._start(p.workspace_id, info["Id"])
            info = await self.get_workspace(p.workspace_id)
        return self.workspace(info, created=False)

    async def _cpu_cap(self) -> float:
        """The CPU maximum: the setting, but never above what the host has (Docker refuses)."""
        if self._host_cpus is None:
            info = await self.call("system.info", self.docker.system.info, subject=f"host {self.host_id}")
            self._host_cpus = int(info.get("NCPU") or 1)
        return min(self.settings.max_cpus, float(self._host_cpus))

    def published_ports(self, p: WorkspaceCreate, image: JSON) -> list[str]:
        """The container ports to publish: ``ports``, else the image's EXPOSE — which obeys the
        same limits (at most MAX_PORTS, no sctp), or the create is refused: an image is as
        untrusted as the command naming it."""
        if p.ports is not None:
            return [str(port) for port in p.ports]
        exposed = sorted(((image.get("Config") or {}).get("ExposedPorts") or {}).keys())
        what = f"{self._subject(p.workspace_id)}: image {p.image}"
        if len(exposed) > MAX_PORTS:
            raise rejected(
                ErrorCode.INVALID_COMMAND,
                f"{what} exposes {len(exposed)} ports, more than the {MAX_PORTS} a workspace may publish; "
                "name the ones to publish in `ports`",
            )
        sctp = [port for port in exposed if port.endswith("/sctp")]
        if sctp:
            raise rejected(
                ErrorCode.INVALID_COMMAND,
                f"{what} exposes {', '.join(sctp)}: sctp ports cannot be published; name the ports in `ports`",
            )
        return exposed

    def _inherited_labels(self, image: JSON) -> dict[str, str]:
        """The image's labels under dockhand's prefixes, each overridden with an empty value.

        Docker puts an image's labels under the container's (it merges, it cannot delete), so
        an image saying ``dockhand.enabled=true`` or ``dockhand.owner=...`` would otherwise
        speak for the workspace; an empty value means "not set" to discovery and to us.
        """
        image_labels: dict[str, str] = (image.get("Config") or {}).get("Labels") or {}
        return {key: "" for key in image_labels if self.labels.reserved(key)}

    def _cap_drop(self, p: WorkspaceCreate) -> list[str] | None:
        """DOCKHAND_CAP_DROP, minus what ``cap_add`` asks for (already checked against the
        allowed set): an allowed capability can still be added back."""
        added = {c.upper().removeprefix("CAP_") for c in p.cap_add}
        return [cap for cap in self.settings.cap_drop if cap not in added] or None

    def _container_config(
        self, p: WorkspaceCreate, image: JSON, wanted: str, network: str, cpu_cap: float, network_id: str
    ) -> JSON:
        s = self.settings
        ports = self.published_ports(p, image)
        cpus = min(p.resources.cpus or s.default_cpus, cpu_cap)
        memory = min(p.resources.memory_bytes or s.default_memory_bytes, s.max_memory_bytes)
        pids = min(p.resources.pids or s.default_pids, s.max_pids)
        labels = self._inherited_labels(image)
        labels.update(p.labels)
        labels.update(
            self._managed_labels(
                **{
                    self.labels.workspace_id: p.workspace_id,
                    self.labels.workspace_name: p.name or p.workspace_id,
                    self.labels.project: p.project,
                    self.labels.stage: p.stage,
                    self.labels.created: utcnow().isoformat().replace("+00:00", "Z"),
                    self.labels.spec_hash: wanted,
                }
            )
        )
        if p.discovery is not None:
            labels[self.labels.discovery("enabled")] = "true"
            labels[self.labels.discovery("domain")] = p.discovery.domain
            labels[self.labels.discovery("port")] = str(p.discovery.port)
            labels[self.labels.discovery("network")] = network
            if p.discovery.description:
                labels[self.labels.discovery("description")] = p.discovery.description
        mounts = [
            {
                "Type": m.type,
                "Target": m.target,
                "ReadOnly": m.read_only,
                **({"Source": m.source} if m.source is not None else {}),
            }
            for m in p.mounts
        ]
        restart: JSON = {"Name": p.restart_policy}
        if p.restart_policy == "on-failure":
            restart["MaximumRetryCount"] = s.restart_max_retries  # Docker's 0 would mean "forever"
        host_config: JSON = {
            # Never 0 (= no limit at all): the schema's and the settings' minimum is Docker's 0.01.
            "NanoCpus": max(round(cpus * 1e9), NANO_CPUS_MIN),
            "Memory": memory,
            "PidsLimit": pids,
            "SecurityOpt": ["no-new-privileges:true"],
            "CapAdd": [c.removeprefix("CAP_") for c in p.cap_add] or None,
            "CapDrop": self._cap_drop(p),
            "ReadonlyRootfs": p.read_only,
            "RestartPolicy": restart,
            "NetworkMode": network_id,
            "Mounts": mounts,
            "PortBindings": {port: [{"HostIp": s.publish_host_ip, "HostPort": ""}] for port in ports},
            "Ulimits": ulimits(s.ulimits) or None,
            "CgroupnsMode": s.cgroupns,
        }
        if s.disable_swap:
            host_config["MemorySwap"] = memory  # memory + swap = memory: no swap
        if s.log_max_size:
            host_config["LogConfig"] = {
                "Type": "json-file",
                "Config": {"max-size": s.log_max_size, "max-file": str(s.log_max_file)},
            }
        config: JSON = {
            "Image": p.image,
            "Env": [f"{k}={v}" for k, v in p.env.items()],
            "Labels": labels,
            "ExposedPorts": {port: {} for port in ports},
            "HostConfig": host_config,
            "NetworkingConfig": {"EndpointsConfig": {network_id: {"Aliases": [p.workspace_id]}}},
        }
        if p.command is not None:
            config["Cmd"] = p.command
        if p.entrypoint is not None:
            config["Entrypoint"] = p.entrypoint
        if p.user is not None:
            config["User"] = p.user
        if p.working_dir is not None:
            config["WorkingDir"] = p.working_dir
        return config

    async def _check_volumes(self, p: WorkspaceCreate) -> list[Mount]:
        """Check every named volume before anything is made; return those to create.

        A volume belongs to the workspace whose create made it (label ``workspace.id``); another
        workspace may mount it only if the creator shared it with a project (``share:
        "project"``) and this workspace is of that project. Anything else is ``forbidden``.
        """
        missing: list[Mount] = []
        seen: set[str] = set()
        for mount in p.mounts:
            if mount.type != "volume" or mount.source is None or mount.source in seen:
                continue
            name = mount.source
            seen.add(name)
            subject = f"volume {name} on {self.host_id}"
            info: JSON | None = await self.maybe(
                "volume.inspect", DockerVolume(self.docker, name).show, subject=subject
            )
            if info is None:
                missing.append(mount)
            else:
                self._check_volume_access(info.get("Labels") or {}, p, subject)
        return missing

    def _check_volume_access(self, labels: dict[str, str], p: WorkspaceCreate, subject: str) -> None:
        if not self.labels.is_managed_by(labels, self.host_id):
            raise DockhandError(ErrorCode.FORBIDDEN, f"{subject} exists and is not managed by this host")
        if not self.owns(labels):
            raise tenancy.forbidden(subject)
        if labels.get(self.labels.workspace_id) == p.workspace_id:
            return
        shared = labels.get(self.labels.volume_share) == "project" and labels.get(self.labels.project)
        if shared and shared == p.project:
            return
        raise DockhandError(
            ErrorCode.FORBIDDEN,
            f"{subject} belongs to another workspace"
            + (f" and is shared only with its project, not {p.project or 'this workspace'}" if shared else "")
            + ' (a volume is shared only when its creator set share: "project")',
        )

    async def _create_volumes(self, mounts: list[Mount], p: WorkspaceCreate, made: _Made) -> None:
        for mount in mounts:
            name = mount.source or ""
            subject = f"volume {name} on {self.host_id}"
            extra: dict[str, str | None] = {self.labels.workspace_id: p.workspace_id}
            if mount.share == "project":
                extra |= {self.labels.volume_share: "project", self.labels.project: p.project}
            config = {"Name": name, "Labels": self._managed_labels(**extra)}
            volume: DockerVolume = await self.call(
                "volume.create", partial(self.docker.volumes.create, config), subject=subject
            )
            # Docker answers a create of an existing name with that volume, labels and all: if
            # another create made it since the check, it is theirs, not ours.
            info: JSON = await self.call("volume.inspect", volume.show, subject=subject)
            labels = info.get("Labels") or {}
            if labels.get(self.labels.workspace_id) == p.workspace_id and labels.get(self.labels.host) == self.host_id:
                made.volumes.append(name)
            self._check_volume_access(labels, p, subject)

    async def _start(self, workspace_id: str, ref: str) -> None:
        subject = self._subject(workspace_id)
        try:
            await self._refused_is_invalid(
                self.call("container.start", lambda: self.docker.containers.container(ref).start(), subject=subject),
                "start",
            )
        except DockhandError as exc:
            if exc.code is not ErrorCode.NOT_FOUND or not isinstance(exc.__cause__, DockerError):
                raise
            # The container is there (it was just made or inspected): what is missing is
            # something it needs, such as its network. Say so, not "workspace not found".
            detail = exc.__cause__.message.strip() or "HTTP 404"
            raise DockhandError(ErrorCode.NOT_FOUND, f"{subject} cannot start: {detail}") from exc

    async def start_workspace(self, workspace_id: str) -> Workspace:
        info = await self.get_workspace(workspace_id)
        if not info["State"].get("Running"):
            await self._start(workspace_id, info["Id"])
            info = await self.get_workspace(workspace_id)
        return self.workspace(info)

    async def stop_workspace(self, p: WorkspaceStop) -> Workspace:
        info = await self.get_workspace(p.workspace_id)
        if info["State"].get("Running") or info["State"].get("Restarting"):
            container = self.docker.containers.container(info["Id"])
            await self.call(
                "container.stop", lambda: container.stop(t=p.timeout_s), subject=self._subject(p.workspace_id)
            )
            info = await self.get_workspace(p.workspace_id)
        return self.workspace(info)

    async def restart_workspace(self, p: WorkspaceStop) -> Workspace:
        info = await self.get_workspace(p.workspace_id)
        container = self.docker.containers.container(info["Id"])
        await self._refused_is_invalid(
            self.call(
                "container.restart", lambda: container.restart(t=p.timeout_s), subject=self._subject(p.workspace_id)
            ),
            "restart",
        )
        return self.workspace(await self.get_workspace(p.workspace_id))

    async def remove_workspace(self, p: WorkspaceRemove) -> WorkspaceRemoved:
        info = await self.find_workspace(p.workspace_id)
        if info is None:
            return WorkspaceRemoved(workspace_id=p.workspace_id, removed=False)
        subject = self._subject(p.workspace_id)
        if info["State"].get("Running") and not p.force:
            raise DockhandError(ErrorCode.CONFLICT, f"{subject} is running; stop it first or set force")
        container = self.docker.containers.container(info["Id"])
        await self.call(
            "container.delete", lambda: container.delete(force=p.force, v=p.remove_volumes), subject=subject
        )
        if p.remove_volumes:
            for mount in info.get("Mounts") or []:
                if mount.get("Type") == "volume" and mount.get("Name"):
                    await self._remove_own_volume(mount["Name"], p.workspace_id)
        return WorkspaceRemoved(workspace_id=p.workspace_id, removed=True)

    async def _remove_own_volume(self, name: str, workspace_id: str) -> None:
        """Remove a named volume only if this workspace's create made it."""
        subject = f"volume {name} on {self.host_id}"
        volume = DockerVolume(self.docker, name)
        info = await self.maybe("volume.inspect", volume.show, subject=subject)
        labels = (info or {}).get("Labels") or {}
        if (
            info
            and self.labels.is_managed_by(labels, self.host_id)
            and labels.get(self.labels.workspace_id) == workspace_id
            and self.owns(labels)
        ):
            try:
                await self.call("volume.delete", volume.delete, subject=subject)
            except DockhandError as exc:
                if exc.code is not ErrorCode.CONFLICT:  # still used by another workspace: keep it
                    raise

    async def inspect_workspace(self, workspace_id: str) -> Workspace:
        return self.workspace(await self.get_workspace(workspace_id))

    async def list_workspaces(self, q: WorkspaceListQuery) -> WorkspaceList:
        label_filters = [f"{self.labels.managed}=true", f"{self.labels.host}={self.host_id}"]
        if q.project:
            label_filters.append(f"{self.labels.project}={q.project}")
        if q.stage:
            label_filters.append(f"{self.labels.stage}={q.stage}")
        sender = tenancy.restricted()
        if sender is not None:
            label_filters.append(f"{self.labels.owner}={sender.user}")
        filters: dict[str, list[str]] = {"label": label_filters}
        if q.state:
            filters["status"] = [q.state]
        containers: list[DockerContainer] = await self.call(
            "container.list",
            lambda: self.docker.containers.list(all=True, filters=json.dumps(filters)),
            subject=f"workspaces on {self.host_id}",
        )
        limit = asyncio.Semaphore(16)

        async def inspect(container: DockerContainer) -> JSON | None:
            async with limit:
                return await self.maybe("container.inspect", container.show, subject=f"container {container.id}")

        infos = await asyncio.gather(*(inspect(c) for c in containers))
        workspaces = [
            self.workspace(info)
            for info in infos
            if info is not None and self.owns(info["Config"].get("Labels"))  # the filter, checked again
        ]
        return WorkspaceList(workspaces=sorted(workspaces, key=lambda w: w.workspace_id))

    async def exec_workspace(self, p: WorkspaceExec) -> ExecOutput:
        target = exec_stream.REPLY.get()
        if p.stream and (target is None or not target.reply_to):
            raise rejected(ErrorCode.INVALID_COMMAND, "stream: true needs a reply_to to stream the output to")
        info = await self.get_workspace(p.workspace_id)
        subject = self._subject(p.workspace_id)
        if not info["State"].get("Running"):
            raise DockhandError(ErrorCode.CONFLICT, f"{subject} is not running")
        container = self.docker.containers.container(info["Id"])
        # Tags the exec's processes (children inherit it) for exec_kill's in-container fallback.
        token = exec_kill.new_token()
        environment = {**p.env, exec_kill.MARKER: token}
        attach = not p.detach  # a detached exec's output is not kept: Docker need not hold it
        execution = await self.call(
            "container.exec",
            lambda: container.exec(
                p.command,
                stdout=attach,
                stderr=attach,
                environment=environment,
                user=p.user or "",
                workdir=p.working_dir,
            ),
            subject=subject,
        )
        if p.detach:
            # Docker runs it inside the container, independent of this API connection (and of
            # this worker's life); timeout_s does not apply to it.
            await self.call("exec.start", lambda: execution.start(detach=True), subject=subject)
            return ExecOutput(exec_id=execution.id)
        limit = self.settings.exec_output_limit_bytes
        out = {1: bytearray(), 2: bytearray()}
        truncated = False
        sender = exec_stream.ChunkSender(target, exec_stream.OutputBuffer(limit)) if p.stream and target else None
        try:
            async with asyncio.timeout(p.timeout_s), execution.start(detach=False) as stream:
                while (message := await stream.read_out()) is not None:
                    if sender is not None:
                        # Past the cap the output is still read (and discarded): the process
                        # must not block on a full pipe.
                        sender.add(message.stream, message.data)
                        continue
                    buffer = out.get(message.stream, out[1])
                    room = limit - len(buffer)
                    if len(message.data) > room:
                        truncated = True
                    buffer.extend(message.data[: max(room, 0)])
            if sender is not None:
                await sender.finish()
                truncated = sender.buffer.truncated
        except TimeoutError as exc:
            # Docker leaves a timed-out exec running (there is no exec kill): end it and its children.
            ended = await exec_kill.kill_quietly(container, info["Id"], execution, token, p.user or "")
            if sender is not None:
                await sender.finish()  # what it wrote before it was killed, then the result
            outcome = "it was killed" if ended else "it could not be killed and may still be running"
            raise DockhandError(
                ErrorCode.TIMEOUT, f"{subject}: exec did not finish within {p.timeout_s} s; {outcome}", retryable=False
            ) from exc
        except asyncio.CancelledError:
            # Drain gave up on it: do not leave it running for the redelivery to start again.
            await asyncio.shield(exec_kill.kill_quietly(container, info["Id"], execution, token, p.user or ""))
            raise
        except DockerError as exc:
            raise from_exception(exc, subject=subject) from exc
        finally:
            if sender is not None:
                await sender.cancel()  # a no-op once finished
        result = await self.call("exec.inspect", execution.inspect, subject=subject)
        return ExecOutput(
            exit_code=int(result.get("ExitCode") or 0),
            stdout=out[1].decode("utf-8", "replace"),
            stderr=out[2].decode("utf-8", "replace"),
            truncated=truncated,
        )

    async def workspace_logs(self, p: WorkspaceLogs) -> LogLines:
        info = await self.get_workspace(p.workspace_id)
        container = self.docker.containers.container(info["Id"])
        params: JSON = {"tail": str(p.tail)}
        if p.since is not None:
            params["since"] = str(int(p.since.timestamp()))
        chunks: list[str] = await self.call(
            "container.logs",
            lambda: container.log(stdout=True, stderr=True, **params),
            subject=self._subject(p.workspace_id),
        )
        lines = "".join(chunks).splitlines()
        limit = self.settings.exec_output_limit_bytes
        kept: list[str] = []
        size = 0
        # Keep the newest lines when the output is over the limit: the tail is what people want.
        for line in reversed(lines):
            size += len(line) + 1
            if size > limit:
                break
            kept.append(line)
        return LogLines(lines=kept[::-1], truncated=len(kept) < len(lines))

    # --- files (workspace.put_files / get_file, through Docker's archive API) ---------------

    def check_files(self, p: WorkspacePutFiles) -> None:
        """``rejected`` up front: files over DOCKHAND_MAX_FILE_BYTES (decoded, all together)."""
        total = sum(base64_decoded_size(f.content) for f in p.files)
        if total > self.settings.max_file_bytes:
            raise rejected(
                ErrorCode.INVALID_COMMAND,
                f"files of {total} bytes in all exceed DOCKHAND_MAX_FILE_BYTES ({self.settings.max_file_bytes})",
            )

    async def put_files(self, p: WorkspacePutFiles) -> FilesWritten:
        """Write the files (parents created, running or stopped workspace): one archive per
        mount point they fall under, so files in a volume of a read-only workspace still go in."""
        self.check_files(p)
        info = await self.get_workspace(p.workspace_id)
        subject = self._subject(p.workspace_id)
        self._check_not_tmpfs(info, [f.path for f in p.files], subject)
        contents = files.decoded((f.path, f.content, f.mode) for f in p.files)
        points = [str(m.get("Destination") or "") for m in info.get("Mounts") or []]
        for root, members in files.group_by_root(contents, points).items():
            archive = files.build_archive(members)
            # noOverwriteDirNonDir: a file never replaces a directory (Docker would delete it).
            params = {"path": root, "noOverwriteDirNonDir": "true"}
            try:
                await self.call(
                    "container.put_archive", partial(self._put_archive, info["Id"], params, archive), subject=subject
                )
            except DockhandError as exc:
                raise self._archive_refusal(exc, subject) from exc
        return FilesWritten(
            workspace_id=p.workspace_id, paths=[f.path for f in p.files], bytes=sum(len(c[1]) for c in contents)
        )

    @staticmethod
    def _check_not_tmpfs(info: JSON, paths: list[str], subject: str) -> None:
        points = files.tmpfs_points(info)
        for path in paths:
            point = files.within(path, points)
            if point is not None:
                raise DockhandError(
                    ErrorCode.INVALID_COMMAND,
                    f"{subject}: {path} is on the tmpfs mount {point}, which Docker's archive API cannot reach "
                    "(a file put there would be hidden under it)",
                )

    async def _put_archive(self, container_id: str, params: JSON, archive: bytes) -> None:
        async with self.docker._query(
            f"containers/{container_id}/archive",
            method="PUT",
            params=params,
            data=archive,
            headers={"Content-Type": "application/x-tar"},
        ) as response:
            # aiodocker hands the response over unreleased: give its connection back to the pool.
            response.close()

    @staticmethod
    def _archive_refusal(exc: DockhandError, subject: str) -> DockhandError:
        """Docker 20.10 answers a refused extraction with a plain 500: an answer about the request
        (a read-only root filesystem, a path through a file), not a daemon fault."""
        cause = exc.__cause__
        if exc.code is not ErrorCode.INTERNAL or not isinstance(cause, DockerError):
            return exc
        detail = cause.message.strip()
        if "read-only" in detail.lower():
            return DockhandError(
                ErrorCode.FORBIDDEN,
                f"{subject}: its root filesystem is read-only (read_only: true); only paths in its volumes "
                f"can be written ({detail})",
            )
        return DockhandError(ErrorCode.INVALID_COMMAND, f"{subject}: Docker refused to write the files: {detail}")

    async def get_file(self, p: WorkspaceGetFile) -> FileContent:
        """Read one regular file (a symlink: its target), at most ``max_bytes`` (capped at
        DOCKHAND_MAX_FILE_BYTES) of it; the archive is read only that far."""
        info = await self.get_workspace(p.workspace_id)
        self._check_not_tmpfs(info, [p.path], self._subject(p.workspace_id))
        limit = min(p.max_bytes, self.settings.max_file_bytes)
        path = p.path
        for _ in range(2):  # Docker's stat resolves a symlink's whole chain: one hop is enough
            subject = f"file {path} in {self._subject(p.workspace_id)}"
            read = await self.call(
                "container.get_archive", partial(self._read_file, info["Id"], path, limit, subject), subject=subject
            )
            if isinstance(read, str):
                path = read
                continue
            member, data = read
            return FileContent(
                path=p.path,
                content=base64.b64encode(data).decode(),
                size=member.size,
                mode=member.mode & 0o7777,
                truncated=member.size > len(data),
            )
        raise DockhandError(
            ErrorCode.INVALID_COMMAND, f"file {p.path} in {self._subject(p.workspace_id)}: a symlink loop"
        )

    async def _read_file(
        self, container_id: str, path: str, limit: int, subject: str
    ) -> tuple[tarfile.TarInfo, bytes] | str:
        """The file's tar header and first ``limit`` bytes, or a symlink's target path. Refusals
        are raised as contract errors here (never retried: they are answers, not faults)."""
        async with self.docker._query(f"containers/{container_id}/archive", params={"path": path}) as response:
            try:
                return await self._read_member(response, path, limit, subject)
            finally:
                # Unreleased, a response holds its pooled connection; the unread rest of the
                # archive (a truncated read, a directory) is dropped with the connection.
                response.close()

    @staticmethod
    async def _read_member(
        response: aiohttp.ClientResponse, path: str, limit: int, subject: str
    ) -> tuple[tarfile.TarInfo, bytes] | str:
        stat = files.parse_stat(response.headers.get(files.STAT_HEADER))
        if stat is not None and stat.is_symlink and stat.link_target and stat.link_target != path:
            return stat.link_target
        if stat is not None and stat.is_dir:
            raise DockhandError(ErrorCode.INVALID_COMMAND, f"{subject} is a directory; get_file reads one file")
        if stat is not None and not stat.is_regular:
            raise DockhandError(ErrorCode.INVALID_COMMAND, f"{subject} is not a regular file")
        head = bytearray()
        member: tarfile.TarInfo | None = None
        async for chunk in response.content.iter_chunked(64 * 1024):
            head += chunk
            if member is None:
                member = files.first_member(bytes(head))
                if member is None and len(head) > files.MAX_HEADER_BYTES:
                    break
            if member is not None and len(head) >= member.offset_data + min(member.size, limit):
                break  # the rest of the file is not wanted: leave it unread
        if member is None:
            member = files.first_member(bytes(head))
        if member is None or not member.isreg():
            raise DockhandError(ErrorCode.INVALID_COMMAND, f"{subject}: Docker's archive holds no regular file")
        want = min(member.size, limit)
        data = bytes(head[member.offset_data : member.offset_data + want])
        if len(data) < want:
            raise DockhandError(ErrorCode.INTERNAL, f"{subject}: the archive ended early", retryable=True)
        return member, data

    # --- networks ------------------------------------------------------------------------

    async def _show_network(self, ref: str, subject: str) -> JSON | None:
        """Inspect a network by name or id (Docker also matches an id prefix); a name that a
        create race made ambiguous is deduplicated first."""
        try:
            return await self.maybe("network.inspect", lambda: DockerNetwork(self.docker, ref).show(), subject=subject)
        except DockhandError as exc:
            if "ambiguous" not in exc.message:
                raise
            return await self._deduplicate_network(ref)

    async def _inspect_network(self, name: str) -> JSON | None:
        info = await self._show_network(name, f"network {name} on {self.host_id}")
        # Docker also matches an id prefix; only an exact name counts.
        if info is None or (info.get("Name") != name and info.get("Id") != name):
            return None
        return info

    async def _deduplicate_network(self, name: str) -> JSON | None:
        """Two processes (a worker and its standby) may create one network at the same moment,
        and Docker's duplicate check is not atomic. Keep the oldest — every process picks the
        same one — and remove the empty managed duplicates."""
        subject = f"network {name} on {self.host_id}"
        listed: list[JSON] = await self.call(
            "network.list", lambda: self.docker.networks.list(filters={"name": [name]}), subject=subject
        )
        same = sorted((n for n in listed if n.get("Name") == name), key=lambda n: (n.get("Created", ""), n["Id"]))
        if not same:
            return None
        keep, *others = same
        for other in others:
            info = await self.maybe("network.inspect", DockerNetwork(self.docker, other["Id"]).show, subject=subject)
            if info and self.labels.is_managed_by(info.get("Labels"), self.host_id) and not info.get("Containers"):
                with contextlib.suppress(DockhandError):  # another process removed it first
                    await self.call("network.delete", DockerNetwork(self.docker, other["Id"]).delete, subject=subject)
        log.warning("%s existed %d times (a create race); kept %s", subject, len(same), keep["Id"][:12])
        result: JSON | None = await self.maybe(
            "network.inspect", DockerNetwork(self.docker, keep["Id"]).show, subject=subject
        )
        return result

    def _check_network_owner(self, info: JSON, subject: str) -> None:
        """Tenancy: a network this host manages must be the sender's. (Networks it does not manage
        are not anyone's; whether a workspace may use one is the allowed-networks policy's call.)"""
        labels = info.get("Labels")
        if self.labels.is_managed_by(labels, self.host_id) and not self.owns(labels):
            raise tenancy.forbidden(subject)

    async def _joinable_network(self, ref: str, subject: str) -> JSON | None:
        """The network ``ref`` names, if a workspace may join it; ``None`` when there is none.

        Joinable: a network this host manages, or one in DOCKHAND_ALLOWED_NETWORKS (or the
        default network). Never Docker's host/none networks, by name or id; its default
        ``bridge`` only when allowed; never a network that ``ref`` matches by an id prefix only.
        """
        self.policy.check_network_name(ref, subject)
        what = f"network {ref} on {self.host_id}"
        info = await self._show_network(ref, what)
        if info is None:
            return None
        name = str(info.get("Name", ""))
        if name != ref and info.get("Id") != ref:
            raise DockhandError(
                ErrorCode.FORBIDDEN, f"{subject}: {ref} is only a partial id of network {name}; give its name"
            )
        self._check_network_owner(info, what)
        if info.get("Driver") in {"host", "null"}:
            raise DockhandError(
                ErrorCode.FORBIDDEN, f"{subject}: network {name} uses the {info['Driver']} driver; never joinable"
            )
        self.policy.check_network_name(name, subject)  # an id of Docker's bridge network
        default_bridge = (info.get("Options") or {}).get("com.docker.network.bridge.default_bridge") == "true"
        managed = self.labels.is_managed_by(info.get("Labels"), self.host_id)
        if (default_bridge or not managed) and not self.policy.network_allowed(name):
            raise DockhandError(
                ErrorCode.FORBIDDEN,
                f"{subject}: network {name} is not managed by this host and not in DOCKHAND_ALLOWED_NETWORKS",
            )
        return info

    def _attach_lock(self, network: str) -> asyncio.Lock:
        """Joins of one network one at a time: the alias check holds until the endpoint exists."""
        return self._attach_locks.setdefault(network, asyncio.Lock())

    async def _check_aliases(
        self, net: JSON, aliases: list[str], own_id: str | None, subject: str, *, workspaces: bool
    ) -> None:
        """Refuse a DNS name on ``net`` that already answers for another container there: its
        name, short id or an alias (running or not: a stopped container's aliases come back at
        its start). With ``workspaces``, also any workspace id / container name of this host,
        so no alias is parked on a name a workspace may still join with. Case-insensitive, as DNS is."""
        taken: dict[str, str] = {}
        what = f"network {net.get('Name')} on {self.host_id}"
        # By name too: a container that was never started has no network id on its endpoint yet.
        members: list[DockerContainer] = await self.call(
            "container.list",
            lambda: self.docker.containers.list(all=True, filters=json.dumps({"network": [net["Id"], net["Name"]]})),
            subject=what,
        )
        limit = asyncio.Semaphore(16)

        async def inspect(container: DockerContainer) -> JSON | None:
            async with limit:
                return await self.maybe("container.inspect", container.show, subject=f"container {container.id}")

        for info in await asyncio.gather(*(inspect(c) for c in members if c.id != own_id)):
            if info is None:
                continue
            name = str(info.get("Name", "")).lstrip("/")
            endpoint = ((info.get("NetworkSettings") or {}).get("Networks") or {}).get(net.get("Name")) or {}
            for dns_name in [name, info["Id"][:12], *(endpoint.get("Aliases") or [])]:
                taken.setdefault(dns_name.lower(), f"container {name}")
        if workspaces:
            managed: list[DockerContainer] = await self.call(
                "container.list",
                lambda: self.docker.containers.list(all=True, filters=json.dumps({"label": self._host_label_filter()})),
                subject=f"workspaces on {self.host_id}",
            )
            for container in managed:
                if container.id == own_id:
                    continue
                labels = _listed(container, "Labels", {}) or {}
                names = [n.lstrip("/") for n in _listed(container, "Names", [])]
                for dns_name in [labels.get(self.labels.workspace_id) or "", *names]:
                    if dns_name:
                        taken.setdefault(dns_name.lower(), f"workspace {labels.get(self.labels.workspace_id)}")
        for alias in aliases:
            holder = taken.get(alias.lower())
            if holder is not None:
                raise DockhandError(
                    ErrorCode.FORBIDDEN,
                    f"{subject}: {alias} already names {holder} on network {net.get('Name')}; "
                    "a DNS name is never taken over",
                )

    async def ensure_network(self, p: NetworkEnsure) -> NetworkEnsured:
        subject = f"network {p.name} on {self.host_id}"
        self.policy.check_labels(p.labels, subject)
        self.policy.check_network_driver(p.driver, subject)
        # One create per name at a time: Docker allows duplicate names for racing creates.
        lock = self._network_locks.setdefault(p.name, asyncio.Lock())
        async with lock:
            info = await self._inspect_network(p.name)
            if info is not None:
                self._check_network_owner(info, subject)
                return NetworkEnsured(network_id=info["Id"], name=p.name, created=False)
            config = {
                "Name": p.name,
                "Driver": p.driver,
                "Internal": p.internal,
                "Attachable": p.attachable,
                "CheckDuplicate": True,
                "Labels": {**p.labels, **self._managed_labels()},
            }
            network: DockerNetwork = await self.call(
                "network.create", lambda: self.docker.networks.create(config), subject=subject
            )
            return NetworkEnsured(network_id=network.id, name=p.name, created=True)

    async def connect_network(self, network: str, workspace_id: str, aliases: list[str]) -> NetworkAttachment:
        """Join a network this host manages (or an allowed one) under aliases no one else answers to."""
        subject = f"{self._subject(workspace_id)}, network {network}"
        self.policy.check_network_name(network, subject)
        info = await self.get_workspace(workspace_id)
        net = await self._joinable_network(network, subject)
        if net is None:
            raise DockhandError(ErrorCode.NOT_FOUND, f"network {network} not found on {self.host_id}")
        if net["Name"] not in (info["NetworkSettings"].get("Networks") or {}):
            async with self._attach_lock(net["Name"]):
                await self._check_aliases(net, aliases or [workspace_id], info["Id"], subject, workspaces=True)
                config = {"Container": info["Id"], "EndpointConfig": {"Aliases": aliases or [workspace_id]}}
                await self.call(
                    "network.connect", lambda: DockerNetwork(self.docker, net["Id"]).connect(config), subject=subject
                )
        return NetworkAttachment(network=network, workspace_id=workspace_id)

    async def disconnect_network(self, network: str, workspace_id: str) -> NetworkAttachment:
        info = await self.get_workspace(workspace_id)
        net = await self._inspect_network(network)
        if net is not None and tenancy.restricted() is not None:  # under tenancy the network must be the sender's too
            self._check_network_owner(net, f"network {network} on {self.host_id}")
        # A container's networks are keyed by name, and the command may name the network by id.
        name = net["Name"] if net is not None else network
        if name in (info["NetworkSettings"].get("Networks") or {}):
            config = {"Container": info["Id"], "Force": False}
            await self.call(
                "network.disconnect",
                lambda: DockerNetwork(self.docker, net["Id"] if net is not None else network).disconnect(config),
                subject=f"{self._subject(workspace_id)}, network {network}",
            )
        return NetworkAttachment(network=network, workspace_id=workspace_id)

    async def remove_network(self, name: str) -> NetworkRemoved:
        subject = f"network {name} on {self.host_id}"
        info = await self._inspect_network(name)
        if info is None:
            return NetworkRemoved(name=name, removed=False)
        if not self.labels.is_managed_by(info.get("Labels"), self.host_id):
            raise DockhandError(ErrorCode.FORBIDDEN, f"{subject} is not managed by this host; left untouched")
        self._check_network_owner(info, subject)
        if info.get("Containers"):
            raise DockhandError(ErrorCode.CONFLICT, f"{subject} is in use by {len(info['Containers'])} container(s)")
        await self.call("network.delete", DockerNetwork(self.docker, info["Id"]).delete, subject=subject)
        return NetworkRemoved(name=name, removed=True)

    # --- images --------------------------------------------------------------------------

    async def _inspect_image(self, image: str) -> JSON | None:
        # The reference goes into the URL path (/images/<name>/json). The grammar already rules
        # out "..", "%" and the like; quoting keeps anything else from ever being a path.
        path_safe = urllib.parse.quote(image, safe="/:@")
        return await self.maybe(
            "image.inspect", lambda: self.docker.images.inspect(path_safe), subject=f"image {image} on {self.host_id}"
        )

    async def ensure_image(self, image: str, policy: str, auth: RegistryAuth | None) -> JSON:
        """The image's inspect data, pulled first as the pull policy says."""
        if policy == "always":
            await self.pull(image, auth)
        info = await self._inspect_image(image)
        if info is None and policy == "missing":
            await self.pull(image, auth)
            info = await self._inspect_image(image)
        if info is None:
            raise DockhandError(
                ErrorCode.IMAGE_NOT_FOUND, f"image {image} not found on {self.host_id} (pull: {policy})"
            )
        return info

    async def pull(self, image: str, auth: RegistryAuth | None) -> None:
        """Pull an image; concurrent pulls of one image (with one identity) share one pull."""
        self.policy.check_image(image)
        key = (image, auth.username if auth else None)
        pending = self._pulls.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._pull(image, auth))
            self._pulls[key] = pending
            pending.add_done_callback(lambda _: self._pulls.pop(key, None))
        # shield: one waiter's cancellation must not cancel the pull the others wait for.
        await asyncio.shield(pending)

    async def _pull(self, image: str, auth: RegistryAuth | None) -> None:
        reference = image
        header: JSON | None = None
        if auth is not None:
            registry = auth.server_address or image_registry(image)
            header = {
                "username": auth.username,
                "password": auth.password.get_secret_value(),
                "serveraddress": registry,
            }
            # aiodocker takes the registry host from the name when auth is set, so Docker Hub
            # names need their canonical form ("busybox" -> "docker.io/library/busybox").
            if explicit_registry(image) is None:
                reference = f"docker.io/{reference if '/' in reference else 'library/' + reference}"
        subject = f"image {image} on {self.host_id}"

        async def pull() -> None:
            async with asyncio.timeout(self.settings.pull_timeout_s):
                await self.docker.images.pull(reference, auth=header)

        await self.call("image.pull", pull, subject=subject, pulling=True)

    async def pull_image(self, image: str, auth: RegistryAuth | None) -> ImagePulled:
        await self.pull(image, auth)
        info = await self._inspect_image(image)
        if info is None:
            raise DockhandError(ErrorCode.IMAGE_PULL_FAILED, f"image {image}: pulled but not found on {self.host_id}")
        repo = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image.split("@")[0]
        digests: list[str] = info.get("RepoDigests") or []
        digest = next((d.split("@", 1)[1] for d in digests if d.startswith(repo + "@")), None)
        if digest is None and digests:
            digest = digests[0].split("@", 1)[1]
        return ImagePulled(image=image, image_id=info["Id"], digest=digest)

    async def inspect_image(self, image: str) -> ImageInfo:
        # The registry policy too: an image from elsewhere is none of the sender's business.
        self.policy.check_image(image)
        info = await self._inspect_image(image)
        if info is None:
            raise DockhandError(ErrorCode.IMAGE_NOT_FOUND, f"image {image} not found on {self.host_id}")
        config = info.get("Config") or {}
        return ImageInfo(
            image_id=info["Id"],
            exposed_ports=sorted((config.get("ExposedPorts") or {}).keys()),
            healthcheck=config.get("Healthcheck"),
            labels=config.get("Labels") or {},
            created=parse_docker_time(info.get("Created")),
            size=int(info.get("Size") or 0),
        )

    # --- host ----------------------------------------------------------------------------

    async def host_info(self) -> HostInfo:
        subject = f"host {self.host_id}"
        info, version = await asyncio.gather(
            self.call("system.info", self.docker.system.info, subject=subject),
            self.call("system.version", self.docker.version, subject=subject),
        )
        return HostInfo(
            host_id=self.host_id,
            docker_version=str(version.get("Version", "")),
            api_version=str(version.get("ApiVersion", "")),
            os=str(info.get("OperatingSystem", "")),
            cpus=int(info.get("NCPU") or 0),
            memory_bytes=int(info.get("MemTotal") or 0),
            containers=int(info.get("Containers") or 0),
        )
