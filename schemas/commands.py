"""Command messages (in): the envelope and one payload model per contract type.

The envelope is a discriminated union on ``type`` so a command validates to exactly one
class; unknown payload fields are rejected. Things the policy forbids outright (privileged,
host namespaces, devices) have no field at all, so they cannot even be expressed.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    Field,
    SecretStr,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_validator,
)

from ._base import (
    AbsPath,
    CommandId,
    DockerName,
    Domain,
    EnvKey,
    EnvValue,
    Grouping,
    ImageRef,
    ImageTag,
    LabelKey,
    LabelValue,
    PortString,
    ShortText,
    WireModel,
    WorkspaceId,
)

Arg = Annotated[str, StringConstraints(max_length=32768)]
Capability = Annotated[str, StringConstraints(pattern=r"^(CAP_)?[A-Z_]{2,32}$")]
Alias = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")]
UserSpec = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_.-]{1,64}(:[a-zA-Z0-9_.-]{1,64})?$")]
_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
WorkspaceState = Literal["created", "running", "paused", "restarting", "removing", "exited", "dead"]


MAX_PORTS = 64
MAX_TTL_S = 366 * 24 * 3600
"""The longest time to live a workspace may be given (``ttl_s``): a year and a day."""
"""At most this many container ports are published per workspace (``ports`` or the image's EXPOSE)."""
MIN_CPUS = 0.01
"""Docker's smallest CPU limit (``NanoCpus`` 10 000 000)."""
MIN_MEMORY_BYTES = 6 * 1024 * 1024
"""Docker's smallest memory limit."""

# Mount targets that would replace what the runtime itself mounts (the kernel's views of
# processes, devices and sysfs) or the root filesystem: runc refuses some only at start,
# after the container exists, and the rest would change what the container can see.
_RUNTIME_TARGETS = ("/proc", "/sys", "/dev")
# A bigger shared-memory tmpfs is an ordinary request (a mount target, not a temp file).
_ALLOWED_UNDER_RUNTIME = ("/dev/shm",)  # noqa: S108


def _normalise_port(value: int | str) -> str:
    text = str(value)
    number, _, proto = text.partition("/")
    if not 1 <= int(number) <= 65535:
        raise ValueError(f"port {number} is outside 1..65535")
    if proto == "sctp":
        # Docker 20.10 publishes through its userland proxy, which has no SCTP: the container
        # would be created and then fail to start ("protocol not supported").
        raise ValueError(f"port {text}: sctp ports cannot be published (Docker's proxy has no SCTP); use tcp or udp")
    return f"{int(number)}/{proto or 'tcp'}"


def normalise_target(target: str) -> str:
    """A mount target the way Docker cleans it (Go's ``path.Clean``): one leading slash,
    no ``.``/``..``/empty components, no trailing slash."""
    parts: list[str] = []
    for part in target.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in {"", "."}:
            parts.append(part)
    return "/" + "/".join(parts)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


class RegistryAuth(WireModel):
    """Credentials for a private registry; sent as X-Registry-Auth, never echoed anywhere."""

    username: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    password: SecretStr = Field(max_length=4096)
    server_address: Annotated[str, StringConstraints(max_length=256)] | None = None


class Mount(WireModel):
    """A named volume, a bind mount (only under the allowed roots) or a tmpfs."""

    type: Literal["volume", "bind", "tmpfs"] = "volume"
    source: Annotated[str, StringConstraints(max_length=1024)] | None = None
    target: AbsPath
    read_only: bool = False
    # Who besides the creating workspace may mount a named volume this create makes: "project"
    # = other workspaces of the same `project` on this host. Applied when the volume is made.
    share: Literal["none", "project"] = "none"

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        target = normalise_target(value)
        if target == "/":
            raise ValueError(f"mount target {value!r} is the root filesystem")
        if any(_within(target, root) for root in _RUNTIME_TARGETS) and not any(
            _within(target, allowed) for allowed in _ALLOWED_UNDER_RUNTIME
        ):
            raise ValueError(f"mount target {value!r} is under /proc, /sys or /dev, which the runtime mounts itself")
        return target

    @model_validator(mode="after")
    def _source(self) -> Mount:
        if self.share != "none" and self.type != "volume":
            raise ValueError("only a named volume can be shared")
        if self.type == "tmpfs":
            if self.source is not None:
                raise ValueError("a tmpfs mount takes no source")
        elif not self.source:
            raise ValueError(f"a {self.type} mount needs a source")
        elif "\x00" in self.source:
            raise ValueError("source must not contain NUL")
        elif self.type == "volume" and not _VOLUME_NAME.match(self.source):
            raise ValueError(f"volume name {self.source!r} is not valid")
        return self


class Resources(WireModel):
    """Requested limits; missing ones take the configured defaults, all are capped at the maxima."""

    # Docker's own minima: 0.01 CPU (a smaller NanoCpus would round to 0 = no limit at all) and
    # 6 MiB of memory; a pids limit of 0 or less would also mean "unlimited".
    cpus: float | None = Field(default=None, ge=MIN_CPUS, le=1024, allow_inf_nan=False)
    memory_bytes: int | None = Field(default=None, ge=MIN_MEMORY_BYTES, le=2**50)
    pids: int | None = Field(default=None, ge=1, le=1_000_000)


class DiscoverySpec(WireModel):
    """Discovery labels to write on the workspace container (Traefik-style)."""

    domain: Domain
    port: int = Field(ge=1, le=65535)
    description: ShortText | None = None


class WorkspaceCreate(WireModel):
    """Payload of ``workspace.create``."""

    workspace_id: WorkspaceId
    image: ImageRef
    name: ShortText | None = None
    command: list[Arg] | None = Field(default=None, max_length=1024)
    entrypoint: list[Arg] | None = Field(default=None, max_length=1024)
    env: dict[EnvKey, EnvValue] = Field(default_factory=dict, max_length=512)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=256)
    ports: list[int | PortString] | None = Field(default=None, max_length=MAX_PORTS)
    network: DockerName | None = None
    mounts: list[Mount] = Field(default_factory=list, max_length=64)
    resources: Resources = Field(default_factory=Resources)
    read_only: bool = False
    user: UserSpec | None = None
    working_dir: AbsPath | None = None
    restart_policy: Literal["no", "on-failure", "always", "unless-stopped"] = "no"
    cap_add: list[Capability] = Field(default_factory=list, max_length=64)
    project: Grouping | None = None
    stage: Grouping | None = None
    discovery: DiscoverySpec | None = None
    pull: Literal["missing", "always", "never"] = "missing"
    registry_auth: RegistryAuth | None = None
    start: bool = True
    ttl_s: int | None = Field(
        default=None, ge=1, le=MAX_TTL_S, description="the workspace expires this many seconds after creation"
    )
    on_expiry: Literal["stop", "remove"] = Field(default="stop", description="what expiry does to it")
    egress: bool = Field(default=True, description="false: the workspace reaches no address outside its own networks")

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[int | str] | None) -> list[int | str] | None:
        if value is None:
            return None
        return list(dict.fromkeys(_normalise_port(p) for p in value))

    @field_validator("network")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        # Host and none networks would escape isolation; container:<id> is not a name at all.
        # Docker's own names are matched in any case ("HOST" must not slip past either).
        if value is not None and value.lower() in {"host", "none"}:
            raise ValueError(f"network {value!r} is not allowed")
        return value

    @field_validator("mounts")
    @classmethod
    def _mounts(cls, value: list[Mount]) -> list[Mount]:
        targets = [m.target.rstrip("/") or "/" for m in value]
        duplicate = next((t for t in targets if targets.count(t) > 1), None)
        if duplicate is not None:
            raise ValueError(f"two mounts on one target {duplicate!r}")
        return value

    @model_validator(mode="after")
    def _shared_volumes(self) -> WorkspaceCreate:
        if self.project is None and any(m.share == "project" for m in self.mounts):
            raise ValueError('a volume shared with "project" needs the workspace\'s project')
        if not self.egress and self.ports:
            raise ValueError("egress: false publishes no ports (Docker maps none on an internal network)")
        return self


class WorkspaceRef(WireModel):
    """Payload of ``workspace.start`` and ``workspace.inspect``."""

    workspace_id: WorkspaceId


class WorkspaceStop(WireModel):
    """Payload of ``workspace.stop`` and ``workspace.restart``."""

    workspace_id: WorkspaceId
    timeout_s: int | None = Field(default=None, ge=0, le=3600)


class WorkspaceRemove(WireModel):
    """Payload of ``workspace.remove``."""

    workspace_id: WorkspaceId
    force: bool = False
    remove_volumes: bool = False


class WorkspaceExtend(WireModel):
    """Payload of ``workspace.extend``: the workspace now expires ``ttl_s`` seconds from now."""

    workspace_id: WorkspaceId
    ttl_s: int = Field(ge=1, le=MAX_TTL_S)


class WorkspaceSnapshot(WireModel):
    """Payload of ``workspace.snapshot``: commit the workspace to an image of this host's."""

    workspace_id: WorkspaceId
    tag: ImageTag | None = Field(default=None, description="default: the time of the snapshot, UTC")


class WorkspaceListQuery(WireModel):
    """Payload of ``workspace.list``: every filter is optional."""

    project: Grouping | None = None
    stage: Grouping | None = None
    state: WorkspaceState | None = None


class WorkspaceExec(WireModel):
    """Payload of ``workspace.exec``: runs a command (exec form) in a running workspace."""

    workspace_id: WorkspaceId
    command: list[Arg] = Field(min_length=1, max_length=1024)
    env: dict[EnvKey, EnvValue] = Field(default_factory=dict, max_length=512)
    user: UserSpec | None = None
    working_dir: AbsPath | None = None
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    stream: bool = False
    """Send the output while it runs, as ``exec.output`` messages to ``reply_to`` (v1.1)."""
    detach: bool = False
    """Start it and answer at once with its ``exec_id``; its output is not kept (v1.1)."""

    @model_validator(mode="after")
    def _stream_or_detach(self) -> WorkspaceExec:
        if self.stream and self.detach:
            raise ValueError("stream and detach exclude each other: a detached exec has no output to stream")
        return self


class WorkspaceLogs(WireModel):
    """Payload of ``workspace.logs``."""

    workspace_id: WorkspaceId
    tail: int = Field(default=100, ge=0, le=10_000)
    since: AwareDatetime | None = None


MAX_FILES = 256
"""At most this many files per ``workspace.put_files``."""
GET_FILE_DEFAULT_BYTES = 1024 * 1024
"""``workspace.get_file``'s default ``max_bytes`` (the worker caps it at DOCKHAND_MAX_FILE_BYTES)."""
# Strict, padded base64 (RFC 4648 §4): no line breaks, no URL-safe alphabet.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
Base64 = Annotated[str, StringConstraints(pattern=BASE64_PATTERN)]


def base64_decoded_size(text: str) -> int:
    """The number of bytes a strict base64 text decodes to (without decoding it)."""
    return len(text) // 4 * 3 - text[-2:].count("=")


def _file_path(value: str) -> str:
    # A workspace path as Docker's archive API takes it: absolute, and never climbing with "..";
    # "." and repeated slashes are only spelling and are cleaned away.
    if any(part == ".." for part in value.split("/")):
        raise ValueError(f"path {value!r} has a '..' component")
    path = normalise_target(value)
    if path == "/":
        raise ValueError(f"path {value!r} names the root directory, not a file")
    return path


FilePath = Annotated[AbsPath, AfterValidator(_file_path)]
"""An absolute file path in a workspace: no NUL, no ``..`` component, not ``/``; cleaned."""


class FileSpec(WireModel):
    """One file of ``workspace.put_files``: where, what (base64) and its permission bits."""

    path: FilePath
    content: Base64
    mode: int = Field(default=0o644, ge=0, le=0o777)


class WorkspacePutFiles(WireModel):
    """Payload of ``workspace.put_files``: write files (parents created) into a workspace."""

    workspace_id: WorkspaceId
    files: list[FileSpec] = Field(min_length=1, max_length=MAX_FILES)

    @field_validator("files")
    @classmethod
    def _distinct(cls, value: list[FileSpec]) -> list[FileSpec]:
        paths = [f.path for f in value]
        duplicate = next((p for p in paths if paths.count(p) > 1), None)
        if duplicate is not None:
            raise ValueError(f"path {duplicate!r} is given twice")
        # One file's path may not be another's directory: Docker would fail half-way through.
        under = next((p for p in paths for q in paths if q.startswith(p + "/")), None)
        if under is not None:
            raise ValueError(f"path {under!r} is a file and also a parent directory of another file")
        return value


class WorkspaceGetFile(WireModel):
    """Payload of ``workspace.get_file``: read one regular file (at most ``max_bytes`` of it)."""

    workspace_id: WorkspaceId
    path: FilePath
    max_bytes: int = Field(default=GET_FILE_DEFAULT_BYTES, ge=0, le=2**40)


class NetworkEnsure(WireModel):
    """Payload of ``network.ensure``: create the network unless it exists."""

    name: DockerName
    driver: Literal["bridge", "overlay", "macvlan", "ipvlan"] = "bridge"
    internal: bool = False
    attachable: bool = False
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=256)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value.lower() in {"host", "none", "bridge"}:
            raise ValueError(f"network {value!r} is reserved")
        return value


class NetworkConnect(WireModel):
    """Payload of ``network.connect``."""

    network: DockerName
    workspace_id: WorkspaceId
    aliases: list[Alias] = Field(default_factory=list, max_length=32)


class NetworkDisconnect(WireModel):
    """Payload of ``network.disconnect``."""

    network: DockerName
    workspace_id: WorkspaceId


class NetworkRemove(WireModel):
    """Payload of ``network.remove``."""

    name: DockerName


class ImagePull(WireModel):
    """Payload of ``image.pull``."""

    image: ImageRef
    registry_auth: RegistryAuth | None = None


class ImageRef_(WireModel):
    """Payload of ``image.inspect``."""

    image: ImageRef


class ImageRemove(WireModel):
    """Payload of ``image.remove``: only images this host made (snapshots)."""

    image: ImageRef


class Empty(WireModel):
    """Payload of commands that take no arguments (``discovery.list``, ``host.info``)."""


# --- envelopes ---------------------------------------------------------------------------


class CommandBase(WireModel):
    """Fields every command carries."""

    command_id: CommandId
    # Aware only: a time without a zone is ambiguous (and cannot be compared with UTC now).
    expires_at: AwareDatetime | None = None


class WorkspaceCreateCommand(CommandBase):
    type: Literal["workspace.create"]
    payload: WorkspaceCreate


class WorkspaceStartCommand(CommandBase):
    type: Literal["workspace.start"]
    payload: WorkspaceRef


class WorkspaceStopCommand(CommandBase):
    type: Literal["workspace.stop"]
    payload: WorkspaceStop


class WorkspaceRestartCommand(CommandBase):
    type: Literal["workspace.restart"]
    payload: WorkspaceStop


class WorkspaceRemoveCommand(CommandBase):
    type: Literal["workspace.remove"]
    payload: WorkspaceRemove


class WorkspaceInspectCommand(CommandBase):
    type: Literal["workspace.inspect"]
    payload: WorkspaceRef


class WorkspaceListCommand(CommandBase):
    type: Literal["workspace.list"]
    payload: WorkspaceListQuery = Field(default_factory=WorkspaceListQuery)


class WorkspaceExecCommand(CommandBase):
    type: Literal["workspace.exec"]
    payload: WorkspaceExec


class WorkspaceLogsCommand(CommandBase):
    type: Literal["workspace.logs"]
    payload: WorkspaceLogs


class WorkspacePutFilesCommand(CommandBase):
    type: Literal["workspace.put_files"]
    payload: WorkspacePutFiles


class WorkspaceGetFileCommand(CommandBase):
    type: Literal["workspace.get_file"]
    payload: WorkspaceGetFile


class WorkspaceExtendCommand(CommandBase):
    type: Literal["workspace.extend"]
    payload: WorkspaceExtend


class WorkspaceSnapshotCommand(CommandBase):
    type: Literal["workspace.snapshot"]
    payload: WorkspaceSnapshot


class NetworkEnsureCommand(CommandBase):
    type: Literal["network.ensure"]
    payload: NetworkEnsure


class NetworkConnectCommand(CommandBase):
    type: Literal["network.connect"]
    payload: NetworkConnect


class NetworkDisconnectCommand(CommandBase):
    type: Literal["network.disconnect"]
    payload: NetworkDisconnect


class NetworkRemoveCommand(CommandBase):
    type: Literal["network.remove"]
    payload: NetworkRemove


class ImagePullCommand(CommandBase):
    type: Literal["image.pull"]
    payload: ImagePull


class ImageInspectCommand(CommandBase):
    type: Literal["image.inspect"]
    payload: ImageRef_


class ImageRemoveCommand(CommandBase):
    type: Literal["image.remove"]
    payload: ImageRemove


class DiscoveryListCommand(CommandBase):
    type: Literal["discovery.list"]
    payload: Empty = Field(default_factory=Empty)


class HostInfoCommand(CommandBase):
    type: Literal["host.info"]
    payload: Empty = Field(default_factory=Empty)


Command = Annotated[
    WorkspaceCreateCommand
    | WorkspaceStartCommand
    | WorkspaceStopCommand
    | WorkspaceRestartCommand
    | WorkspaceRemoveCommand
    | WorkspaceInspectCommand
    | WorkspaceListCommand
    | WorkspaceExecCommand
    | WorkspaceLogsCommand
    | WorkspacePutFilesCommand
    | WorkspaceGetFileCommand
    | WorkspaceExtendCommand
    | WorkspaceSnapshotCommand
    | NetworkEnsureCommand
    | NetworkConnectCommand
    | NetworkDisconnectCommand
    | NetworkRemoveCommand
    | ImagePullCommand
    | ImageInspectCommand
    | ImageRemoveCommand
    | DiscoveryListCommand
    | HostInfoCommand,
    Field(discriminator="type"),
]
"""Any command: validate with :data:`COMMAND_ADAPTER`."""

COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)

COMMAND_TYPES: frozenset[str] = frozenset(
    member.model_fields["type"].annotation.__args__[0]
    for member in Command.__origin__.__args__  # type: ignore[attr-defined]
)
"""Every command type name of the contract."""
