"""Docker operations on managed workspaces, networks and images, through aiodocker.

Every Docker call goes through :meth:`DockerOps.call`, the one place that retries transient
failures (bounded, jittered) and maps errors to contract codes. Only containers, networks and
volumes carrying this host's managed labels are changed; anything else is ``forbidden``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import aiodocker
import stamina
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError
from aiodocker.networks import DockerNetwork
from aiodocker.volumes import DockerVolume

from schemas import ErrorCode, RegistryAuth, utcnow
from schemas.commands import (
    NetworkEnsure,
    WorkspaceCreate,
    WorkspaceExec,
    WorkspaceListQuery,
    WorkspaceLogs,
    WorkspaceRemove,
    WorkspaceStop,
)
from schemas.results import (
    ExecOutput,
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

from .errors import DockhandError, from_exception, is_transient
from .labels import Labels
from .policy import Policy, image_registry
from .settings import Settings
from .telemetry import Telemetry

log = logging.getLogger("dockhand.docker")

T = TypeVar("T")
JSON = dict[str, Any]

_NEVER = "0001-01-01T00:00:00Z"


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


def spec_hash(payload: WorkspaceCreate) -> str:
    """A stable hash of what defines a workspace; how it is pulled or started does not count."""
    spec = payload.model_dump(mode="json", exclude={"pull", "registry_auth", "start"})
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
        self._host_cpus: int | None = None
        self.available = True  # set by the health monitor's probe

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
        While the health monitor sees the daemon down, calls fail fast (``docker_unavailable``).
        """
        if not self.available:
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
                        return await fn()
                    except Exception as first:
                        if not is_transient(first) or attempts < 2:
                            raise
                    attempts -= 1
                async for attempt in stamina.retry_context(
                    on=is_transient, attempts=attempts, timeout=self.settings.docker_retry_timeout_s
                ):
                    with attempt:
                        return await fn()
        except Exception as exc:
            raise from_exception(exc, subject=subject, not_found=not_found, pulling=pulling) from exc
        raise AssertionError("unreachable: stamina yields at least one attempt")  # pragma: no cover

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

    def _managed_labels(self, **extra: str | None) -> dict[str, str]:
        labels = {self.labels.managed: "true", self.labels.host: self.host_id}
        labels.update({k: v for k, v in extra.items() if v is not None})
        return labels

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
            project=labels.get(self.labels.project),
            stage=labels.get(self.labels.stage),
            created_at=parse_docker_time(info.get("Created")),
            started_at=parse_docker_time(state.get("StartedAt")),
        )

    # --- workspaces ----------------------------------------------------------------------

    def check_create(self, p: WorkspaceCreate) -> None:
        """Policy for a create, before any Docker call."""
        what = self._subject(p.workspace_id)
        self.policy.check_image(p.image)
        self.policy.check_labels(p.labels, what)
        self.policy.check_capabilities(p.cap_add, what)
        for mount in p.mounts:
            if mount.type == "bind" and mount.source is not None:
                self.policy.check_bind(mount.source, what)

    async def create_workspace(self, p: WorkspaceCreate) -> Workspace:
        self.check_create(p)
        subject = self._subject(p.workspace_id)
        wanted = spec_hash(p)
        existing = await self.find_workspace(p.workspace_id)
        if existing is not None:
            return await self._adopt(existing, p, wanted)

        image = await self.ensure_image(p.image, p.pull, p.registry_auth)
        network = p.network or self.settings.default_network
        # By id from here on: a name can be briefly ambiguous (see _deduplicate_network).
        network_id = (await self.ensure_network(NetworkEnsure(name=network))).network_id
        await self._ensure_volumes(p)
        config = self._container_config(p, image, wanted, network, await self._cpu_cap(), network_id)
        name = self.container_name(p.workspace_id)
        try:
            await self.call(
                "container.create",
                lambda: self.docker.containers.create(config, name=name),
                subject=subject,
                not_found=ErrorCode.IMAGE_NOT_FOUND,
            )
        except DockhandError as exc:
            # Lost a race with another create of the same workspace (or a crash left the
            # container behind): adopt it if it is the same spec.
            if exc.code is not ErrorCode.CONFLICT:
                raise
            existing = await self.find_workspace(p.workspace_id)
            if existing is None:
                raise
            return await self._adopt(existing, p, wanted)
        if p.start:
            await self._start(p.workspace_id, name)
        return self.workspace(await self.get_workspace(p.workspace_id), created=True)

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

    def _container_config(
        self, p: WorkspaceCreate, image: JSON, wanted: str, network: str, cpu_cap: float, network_id: str
    ) -> JSON:
        s = self.settings
        image_ports = sorted(((image.get("Config") or {}).get("ExposedPorts") or {}).keys())
        ports = [str(port) for port in p.ports] if p.ports is not None else image_ports
        cpus = min(p.resources.cpus or s.default_cpus, cpu_cap)
        memory = min(p.resources.memory_bytes or s.default_memory_bytes, s.max_memory_bytes)
        pids = min(p.resources.pids or s.default_pids, s.max_pids)
        labels = dict(p.labels)
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
        host_config: JSON = {
            "NanoCpus": int(cpus * 1e9),
            "Memory": memory,
            "PidsLimit": pids,
            "SecurityOpt": ["no-new-privileges:true"],
            "CapAdd": [c.removeprefix("CAP_") for c in p.cap_add] or None,
            "ReadonlyRootfs": p.read_only,
            "RestartPolicy": {"Name": p.restart_policy},
            "NetworkMode": network_id,
            "Mounts": mounts,
            "PortBindings": {port: [{"HostIp": s.publish_host_ip, "HostPort": ""}] for port in ports},
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

    async def _ensure_volumes(self, p: WorkspaceCreate) -> None:
        """Named volumes are created with managed labels; someone else's volume is refused."""
        for mount in p.mounts:
            if mount.type != "volume" or mount.source is None:
                continue
            name = mount.source
            subject = f"volume {name} on {self.host_id}"
            info: JSON | None = await self.maybe(
                "volume.inspect", DockerVolume(self.docker, name).show, subject=subject
            )
            if info is None:
                config = {"Name": name, "Labels": self._managed_labels(**{self.labels.workspace_id: p.workspace_id})}
                await self.call("volume.create", partial(self.docker.volumes.create, config), subject=subject)
            elif not self.labels.is_managed_by(info.get("Labels"), self.host_id):
                raise DockhandError(ErrorCode.FORBIDDEN, f"{subject} exists and is not managed by this host")

    async def _start(self, workspace_id: str, ref: str) -> None:
        await self.call(
            "container.start",
            lambda: self.docker.containers.container(ref).start(),
            subject=self._subject(workspace_id),
        )

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
        await self.call(
            "container.restart", lambda: container.restart(t=p.timeout_s), subject=self._subject(p.workspace_id)
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
        workspaces = [self.workspace(info) for info in infos if info is not None]
        return WorkspaceList(workspaces=sorted(workspaces, key=lambda w: w.workspace_id))

    async def exec_workspace(self, p: WorkspaceExec) -> ExecOutput:
        info = await self.get_workspace(p.workspace_id)
        subject = self._subject(p.workspace_id)
        if not info["State"].get("Running"):
            raise DockhandError(ErrorCode.CONFLICT, f"{subject} is not running")
        container = self.docker.containers.container(info["Id"])
        execution = await self.call(
            "container.exec",
            lambda: container.exec(
                p.command, stdout=True, stderr=True, environment=p.env, user=p.user or "", workdir=p.working_dir
            ),
            subject=subject,
        )
        limit = self.settings.exec_output_limit_bytes
        out = {1: bytearray(), 2: bytearray()}
        truncated = False
        try:
            async with asyncio.timeout(p.timeout_s), execution.start(detach=False) as stream:
                while (message := await stream.read_out()) is not None:
                    buffer = out.get(message.stream, out[1])
                    room = limit - len(buffer)
                    if len(message.data) > room:
                        truncated = True
                    buffer.extend(message.data[: max(room, 0)])
        except TimeoutError as exc:
            raise DockhandError(
                ErrorCode.TIMEOUT, f"{subject}: exec did not finish within {p.timeout_s} s", retryable=False
            ) from exc
        except DockerError as exc:
            raise from_exception(exc, subject=subject) from exc
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

    # --- networks ------------------------------------------------------------------------

    async def _inspect_network(self, name: str) -> JSON | None:
        subject = f"network {name} on {self.host_id}"
        try:
            info = await self.maybe("network.inspect", lambda: DockerNetwork(self.docker, name).show(), subject=subject)
        except DockhandError as exc:
            if "ambiguous" not in exc.message:
                raise
            info = await self._deduplicate_network(name)
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

    async def ensure_network(self, p: NetworkEnsure) -> NetworkEnsured:
        subject = f"network {p.name} on {self.host_id}"
        self.policy.check_labels(p.labels, subject)
        # One create per name at a time: Docker allows duplicate names for racing creates.
        lock = self._network_locks.setdefault(p.name, asyncio.Lock())
        async with lock:
            info = await self._inspect_network(p.name)
            if info is not None:
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
        info = await self.get_workspace(workspace_id)
        net = await self._inspect_network(network)
        if net is None:
            raise DockhandError(ErrorCode.NOT_FOUND, f"network {network} not found on {self.host_id}")
        if net.get("Driver") in {"host", "null"}:
            raise DockhandError(ErrorCode.FORBIDDEN, f"network {network} uses the {net['Driver']} driver")
        if network not in (info["NetworkSettings"].get("Networks") or {}):
            config = {"Container": info["Id"], "EndpointConfig": {"Aliases": aliases or [workspace_id]}}
            await self.call(
                "network.connect",
                lambda: DockerNetwork(self.docker, net["Id"]).connect(config),
                subject=f"{self._subject(workspace_id)}, network {network}",
            )
        return NetworkAttachment(network=network, workspace_id=workspace_id)

    async def disconnect_network(self, network: str, workspace_id: str) -> NetworkAttachment:
        info = await self.get_workspace(workspace_id)
        if network in (info["NetworkSettings"].get("Networks") or {}):
            config = {"Container": info["Id"], "Force": False}
            await self.call(
                "network.disconnect",
                lambda: DockerNetwork(self.docker, network).disconnect(config),
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
        if info.get("Containers"):
            raise DockhandError(ErrorCode.CONFLICT, f"{subject} is in use by {len(info['Containers'])} container(s)")
        await self.call("network.delete", DockerNetwork(self.docker, info["Id"]).delete, subject=subject)
        return NetworkRemoved(name=name, removed=True)

    # --- images --------------------------------------------------------------------------

    async def _inspect_image(self, image: str) -> JSON | None:
        return await self.maybe(
            "image.inspect", lambda: self.docker.images.inspect(image), subject=f"image {image} on {self.host_id}"
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
            if image_registry(image) == "docker.io" and not image.startswith("docker.io/"):
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
