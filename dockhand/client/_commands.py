"""One typed call per command type, grouped by resource as the contract groups them.

Each call takes the payload's fields as arguments (or, for ``workspace.create``, a
:class:`~dockhand.schemas.commands.WorkspaceCreate` or its fields as keywords), plus the call
options of :class:`CallOptions`, and returns the result body's model; a result that is not
``succeeded`` raises a :class:`~dockhand.client.errors.CommandError`.
"""

from __future__ import annotations

import base64
import builtins
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack, overload

from dockhand.schemas.commands import (
    DiscoverySpec,
    Mount,
    RegistryAuth,
    Resources,
    WorkspaceCreate,
)
from dockhand.schemas.results import (
    ExecOutput,
    FileContent,
    FilesWritten,
    HostInfo,
    ImageInfo,
    ImagePulled,
    ImageRemoved,
    LogLines,
    NetworkAttachment,
    NetworkEnsured,
    NetworkRemoved,
    ServiceList,
    SnapshotMade,
    Workspace,
    WorkspaceList,
    WorkspaceRemoved,
)

if TYPE_CHECKING:
    from ._client import Client, Retry
    from ._stream import ExecStream


class CallOptions(TypedDict, total=False):
    """Options every typed call takes (defaults from the :class:`~dockhand.client.Client`)."""

    host: str
    """Target: a host id or ``"any"``."""
    command_id: str
    """The idempotency key (default: a new one per call, reused by its retries)."""
    deadline: float | datetime | timedelta
    """``expires_at``: not run after this (seconds from now, a span or a time)."""
    timeout: float
    """Seconds to wait for the result, retries included."""
    retry: Retry


class WorkspaceFields(TypedDict, total=False):
    """``workspace.create``'s payload fields as keywords (see ``WorkspaceCreate``)."""

    workspace_id: str
    image: str
    name: str
    command: list[str]
    entrypoint: list[str]
    env: Mapping[str, str]
    labels: Mapping[str, str]
    ports: list[int | str]
    network: str
    mounts: list[Mount | Mapping[str, Any]]
    resources: Resources | Mapping[str, Any]
    read_only: bool
    user: str
    working_dir: str
    restart_policy: Literal["no", "on-failure", "always", "unless-stopped"]
    cap_add: list[str]
    project: str
    stage: str
    discovery: DiscoverySpec | Mapping[str, Any]
    pull: Literal["missing", "always", "never"]
    registry_auth: RegistryAuth | Mapping[str, Any]
    start: bool
    ttl_s: int
    on_expiry: Literal["stop", "remove"]
    egress: bool


def _fields(**values: Any) -> dict[str, Any]:
    """A payload of the arguments that were given (None: the contract's default)."""
    return {key: value for key, value in values.items() if value is not None}


class _Resource:
    def __init__(self, client: Client) -> None:
        self._client = client


class Workspaces(_Resource):
    """``workspace.*`` commands."""

    async def create(
        self,
        spec: WorkspaceCreate | None = None,
        /,
        *,
        host: str | None = None,
        command_id: str | None = None,
        deadline: float | datetime | timedelta | None = None,
        timeout: float | None = None,
        retry: Retry | None = None,
        **fields: Unpack[WorkspaceFields],
    ) -> Workspace:
        """Create (and by default start) a workspace; an existing one with the same spec gives
        ``created=False``, with another spec :class:`CommandFailed` ``conflict``."""
        if spec is not None and fields:
            raise TypeError("pass a WorkspaceCreate or its fields as keywords, not both")
        payload: Any = spec if spec is not None else to_wire(dict(fields))
        options = _fields(host=host, command_id=command_id, deadline=deadline, timeout=timeout, retry=retry)
        return await self._client._typed(Workspace, "workspace.create", payload, options)

    async def start(self, workspace_id: str, **options: Unpack[CallOptions]) -> Workspace:
        """Start a workspace (running already: succeeds)."""
        return await self._client._typed(Workspace, "workspace.start", {"workspace_id": workspace_id}, options)

    async def stop(
        self, workspace_id: str, *, timeout_s: int | None = None, **options: Unpack[CallOptions]
    ) -> Workspace:
        """Stop a workspace (stopped already: succeeds); ``timeout_s`` before Docker kills it."""
        payload = _fields(workspace_id=workspace_id, timeout_s=timeout_s)
        return await self._client._typed(Workspace, "workspace.stop", payload, options)

    async def restart(
        self, workspace_id: str, *, timeout_s: int | None = None, **options: Unpack[CallOptions]
    ) -> Workspace:
        """Restart a workspace."""
        payload = _fields(workspace_id=workspace_id, timeout_s=timeout_s)
        return await self._client._typed(Workspace, "workspace.restart", payload, options)

    async def remove(
        self,
        workspace_id: str,
        *,
        force: bool | None = None,
        remove_volumes: bool | None = None,
        **options: Unpack[CallOptions],
    ) -> WorkspaceRemoved:
        """Remove a workspace (missing already: succeeds with ``removed=False``)."""
        payload = _fields(workspace_id=workspace_id, force=force, remove_volumes=remove_volumes)
        return await self._client._typed(WorkspaceRemoved, "workspace.remove", payload, options)

    async def inspect(self, workspace_id: str, **options: Unpack[CallOptions]) -> Workspace:
        """A workspace's current state."""
        return await self._client._typed(Workspace, "workspace.inspect", {"workspace_id": workspace_id}, options)

    async def list(
        self,
        *,
        project: str | None = None,
        stage: str | None = None,
        state: str | None = None,
        **options: Unpack[CallOptions],
    ) -> WorkspaceList:
        """The host's workspaces, optionally only a project / stage / state."""
        payload = _fields(project=project, stage=stage, state=state)
        return await self._client._typed(WorkspaceList, "workspace.list", payload, options)

    @overload
    async def exec(
        self,
        workspace_id: str,
        command: builtins.list[str],
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        working_dir: str | None = None,
        timeout_s: float | None = None,
        detach: Literal[False] = False,
        **options: Unpack[CallOptions],
    ) -> ExecOutput: ...

    @overload
    async def exec(
        self,
        workspace_id: str,
        command: builtins.list[str],
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        working_dir: str | None = None,
        timeout_s: float | None = None,
        detach: Literal[True],
        **options: Unpack[CallOptions],
    ) -> str: ...

    async def exec(
        self,
        workspace_id: str,
        command: builtins.list[str],
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        working_dir: str | None = None,
        timeout_s: float | None = None,
        detach: bool = False,
        **options: Unpack[CallOptions],
    ) -> ExecOutput | str:
        """Run ``command`` in a running workspace and wait for it (output capped: ``truncated``).
        With ``detach=True``: start it and return its exec id at once (its output is not kept;
        it runs until it ends, also across worker restarts)."""
        payload = _fields(
            workspace_id=workspace_id,
            command=list(command),
            env=dict(env) if env is not None else None,
            user=user,
            working_dir=working_dir,
            timeout_s=timeout_s,
            detach=detach or None,
        )
        if timeout_s is not None and "timeout" not in options and not detach:
            options = {**options, "timeout": max(self._client.timeout, timeout_s + 30)}
        out = await self._client._typed(ExecOutput, "workspace.exec", payload, options)
        if detach:
            assert out.exec_id is not None, "a detached exec answers with its exec_id"
            return out.exec_id
        return out

    def exec_stream(
        self,
        workspace_id: str,
        command: builtins.list[str],
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        working_dir: str | None = None,
        timeout_s: float | None = None,
        host: str | None = None,
        command_id: str | None = None,
        deadline: float | datetime | timedelta | None = None,
        timeout: float | None = None,
    ) -> ExecStream:
        """Run ``command`` with its output streamed: ``async for chunk in ...`` yields each
        :class:`~dockhand.schemas.results.ExecOutputChunk` as it is produced, then the stream's
        ``result`` is the :class:`ExecOutput` (stdout/stderr empty). Sent once, not retried."""
        payload = _fields(
            workspace_id=workspace_id,
            command=list(command),
            env=dict(env) if env is not None else None,
            user=user,
            working_dir=working_dir,
            timeout_s=timeout_s,
        )
        if timeout is None:
            timeout = max(self._client.timeout, (timeout_s if timeout_s is not None else 60.0) + 30)
        return self._client.exec_stream(payload, host=host, command_id=command_id, deadline=deadline, timeout=timeout)

    async def logs(
        self,
        workspace_id: str,
        *,
        tail: int | None = None,
        since: datetime | None = None,
        **options: Unpack[CallOptions],
    ) -> LogLines:
        """The last ``tail`` log lines (default 100), optionally only those after ``since``."""
        payload = _fields(
            workspace_id=workspace_id, tail=tail, since=since.isoformat().replace("+00:00", "Z") if since else None
        )
        return await self._client._typed(LogLines, "workspace.logs", payload, options)

    async def put_files(
        self,
        workspace_id: str,
        files: Mapping[str, bytes | Path] | Iterable[tuple[str, bytes | Path]],
        *,
        mode: int | None = None,
        **options: Unpack[CallOptions],
    ) -> FilesWritten:
        """Write files into a workspace (running or stopped; parent directories are made):
        ``{"/abs/path": b"bytes" or Path("local/file")}``. ``mode``: for every file; else a local
        file's permission bits, and 0644 for bytes."""
        items = files.items() if isinstance(files, Mapping) else files
        specs: builtins.list[dict[str, Any]] = []
        for path, source in items:
            if isinstance(source, Path):
                data, bits = source.read_bytes(), source.stat().st_mode & 0o777
            else:
                data, bits = bytes(source), None
            file_mode = mode if mode is not None else bits
            specs.append(_fields(path=path, content=base64.b64encode(data).decode(), mode=file_mode))
        payload = {"workspace_id": workspace_id, "files": specs}
        return await self._client._typed(FilesWritten, "workspace.put_files", payload, options)

    async def get_file(
        self, workspace_id: str, path: str, *, max_bytes: int | None = None, **options: Unpack[CallOptions]
    ) -> FileContent:
        """Read one file of a workspace (at most ``max_bytes``, default 1 MiB, capped by the
        worker's DOCKHAND_MAX_FILE_BYTES: then ``truncated``); its bytes are ``.data``."""
        payload = _fields(workspace_id=workspace_id, path=path, max_bytes=max_bytes)
        return await self._client._typed(FileContent, "workspace.get_file", payload, options)

    async def extend(self, workspace_id: str, ttl_s: int, **options: Unpack[CallOptions]) -> Workspace:
        """Move a workspace's deadline: it now expires ``ttl_s`` seconds from now (``expires_at``)."""
        payload = {"workspace_id": workspace_id, "ttl_s": ttl_s}
        return await self._client._typed(Workspace, "workspace.extend", payload, options)

    async def snapshot(
        self, workspace_id: str, *, tag: str | None = None, **options: Unpack[CallOptions]
    ) -> SnapshotMade:
        """Commit a workspace to an image of its host's (``image``: what a create takes)."""
        payload = _fields(workspace_id=workspace_id, tag=tag)
        return await self._client._typed(SnapshotMade, "workspace.snapshot", payload, options)


class Networks(_Resource):
    """``network.*`` commands."""

    async def ensure(
        self,
        name: str,
        *,
        driver: str | None = None,
        internal: bool | None = None,
        attachable: bool | None = None,
        labels: Mapping[str, str] | None = None,
        **options: Unpack[CallOptions],
    ) -> NetworkEnsured:
        """Create a network unless it exists (``created`` says which)."""
        payload = _fields(
            name=name,
            driver=driver,
            internal=internal,
            attachable=attachable,
            labels=dict(labels) if labels is not None else None,
        )
        return await self._client._typed(NetworkEnsured, "network.ensure", payload, options)

    async def connect(
        self, network: str, workspace_id: str, *, aliases: list[str] | None = None, **options: Unpack[CallOptions]
    ) -> NetworkAttachment:
        """Connect a workspace to a network (with DNS ``aliases`` on it)."""
        payload = _fields(network=network, workspace_id=workspace_id, aliases=aliases)
        return await self._client._typed(NetworkAttachment, "network.connect", payload, options)

    async def disconnect(self, network: str, workspace_id: str, **options: Unpack[CallOptions]) -> NetworkAttachment:
        """Disconnect a workspace from a network."""
        payload = {"network": network, "workspace_id": workspace_id}
        return await self._client._typed(NetworkAttachment, "network.disconnect", payload, options)

    async def remove(self, name: str, **options: Unpack[CallOptions]) -> NetworkRemoved:
        """Remove a network this host manages (missing: ``removed=False``)."""
        return await self._client._typed(NetworkRemoved, "network.remove", {"name": name}, options)


class Images(_Resource):
    """``image.*`` commands."""

    async def pull(
        self,
        image: str,
        *,
        registry_auth: RegistryAuth | Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> ImagePulled:
        """Pull an image (credentials never appear in results, events or logs)."""
        payload = to_wire(_fields(image=image, registry_auth=registry_auth))
        return await self._client._typed(ImagePulled, "image.pull", payload, options)

    async def inspect(self, image: str, **options: Unpack[CallOptions]) -> ImageInfo:
        """An image's id, exposed ports, healthcheck, labels, creation time and size."""
        return await self._client._typed(ImageInfo, "image.inspect", {"image": image}, options)

    async def remove(self, image: str, **options: Unpack[CallOptions]) -> ImageRemoved:
        """Remove an image this host made (a snapshot); in use by a workspace: ``conflict``."""
        return await self._client._typed(ImageRemoved, "image.remove", {"image": image}, options)


class Discovery(_Resource):
    """``discovery.list`` (for a live view across hosts, see :class:`~dockhand.client.DiscoveryView`)."""

    async def list(self, **options: Unpack[CallOptions]) -> ServiceList:
        """The services the host discovers now."""
        return await self._client._typed(ServiceList, "discovery.list", None, options)


class Host(_Resource):
    """``host.info``."""

    async def info(self, **options: Unpack[CallOptions]) -> HostInfo:
        """The host's Docker version, OS, CPUs, memory and container count."""
        return await self._client._typed(HostInfo, "host.info", None, options)


def to_wire(value: Any) -> Any:
    """``value`` with the models in it (mounts, resources, registry_auth ...) as JSON-ready data;
    a secret (a registry password) as itself, not pydantic's ``"**********"``."""
    from pydantic import BaseModel, SecretStr

    if isinstance(value, BaseModel):
        data = value.model_dump(mode="json", exclude_unset=True)
        for name, item in value:
            if name in data and isinstance(item, SecretStr | BaseModel | list):
                data[name] = to_wire(item)
        return data
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list | tuple):
        return [to_wire(item) for item in value]
    if isinstance(value, Mapping):
        return {key: to_wire(item) for key, item in value.items()}
    return value


__all__ = [
    "CallOptions",
    "Discovery",
    "Host",
    "Images",
    "Networks",
    "WorkspaceCreate",
    "WorkspaceFields",
    "Workspaces",
    "to_wire",
]
