"""Result messages (out): the envelope, error codes and one result model per command type."""

from __future__ import annotations

import base64
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from ._base import WireModel


class Status(StrEnum):
    """Outcome of a command. ``rejected``: never valid; ``failed``: valid but did not succeed."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"


class ErrorCode(StrEnum):
    """The contract's error codes."""

    INVALID_COMMAND = "invalid_command"
    UNKNOWN_TYPE = "unknown_type"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    FORBIDDEN = "forbidden"
    IMAGE_NOT_FOUND = "image_not_found"
    IMAGE_PULL_FAILED = "image_pull_failed"
    DOCKER_UNAVAILABLE = "docker_unavailable"
    TIMEOUT = "timeout"
    INTERNAL = "internal"
    CAPACITY = "capacity"  # v1.1: the host is at a limit now; retryable (later, or another host)


class ErrorInfo(WireModel):
    """Why a command did not succeed, and whether sending it again may help."""

    code: ErrorCode
    message: str
    retryable: bool = False


class PortBinding(WireModel):
    container_port: int
    protocol: str
    host_ip: str
    host_port: int


class Workspace(WireModel):
    """A workspace container as results report it."""

    workspace_id: str
    name: str | None = None
    container_id: str
    container_name: str
    host_id: str
    image: str
    image_id: str
    state: str
    health: str | None = None
    created: bool | None = Field(default=None, description="create only: false when it existed")
    ports: list[PortBinding] = Field(default_factory=list)
    networks: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    project: str | None = None
    stage: str | None = None
    owner: str | None = Field(default=None, description="the sender that created it (tenancy on), else absent")
    created_at: datetime | None = None
    started_at: datetime | None = None
    expires_at: datetime | None = Field(default=None, description="when it expires (ttl_s), else absent")


class WorkspaceRemoved(WireModel):
    workspace_id: str
    removed: bool


class SnapshotMade(WireModel):
    """The result of ``workspace.snapshot``: an image ``workspace.create`` takes as its ``image``."""

    workspace_id: str
    image: str
    image_id: str


class ImageRemoved(WireModel):
    """The result of ``image.remove``; ``removed: false``: there was no such image."""

    image: str
    removed: bool


class WorkspaceList(WireModel):
    workspaces: list[Workspace]


def _is_none(value: object) -> bool:
    return value is None


class ExecOutput(WireModel):
    """The result of ``workspace.exec``. A detached exec answers with ``exec_id`` (and no
    ``exit_code``: it has not ended; the output fields keep their empty defaults); a streamed one
    with empty stdout/stderr. The absent fields are left out, so a v1 exec result is unchanged."""

    exit_code: int | None = Field(default=None, exclude_if=_is_none)
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    exec_id: str | None = Field(default=None, exclude_if=_is_none)


class ExecOutputChunk(WireModel):
    """One piece of a streamed exec's output (``exec.output``, AMQP ``message_type``
    ``dockhand.exec.output``), sent to the command's ``reply_to`` with its ``correlation_id``.
    ``seq`` counts from 1 per command across both streams; exactly one of ``data`` (valid UTF-8)
    and ``data_b64`` (anything else) is set."""

    command_id: str
    seq: int = Field(ge=1)
    stream: Literal["stdout", "stderr"]
    data: str | None = None
    data_b64: str | None = None
    time: datetime

    def content(self) -> bytes:
        """The output bytes, whichever field carries them."""
        if self.data is not None:
            return self.data.encode()
        return base64.b64decode(self.data_b64 or "")

    def text(self) -> str:
        """The output as text (bytes that are not UTF-8 replaced)."""
        return self.data if self.data is not None else self.content().decode("utf-8", "replace")


class FilesWritten(WireModel):
    """The result of ``workspace.put_files``: the paths written and their decoded bytes in all."""

    workspace_id: str
    paths: list[str]
    bytes: int


class FileContent(WireModel):
    """The result of ``workspace.get_file``: ``content`` (base64) is the file's first
    ``max_bytes``; ``size`` is its real size, ``truncated`` whether content is shorter than it."""

    path: str
    content: str
    size: int
    mode: int
    truncated: bool

    @property
    def data(self) -> bytes:
        """``content`` decoded (a convenience; the wire carries base64)."""
        return base64.b64decode(self.content)


class LogLines(WireModel):
    lines: list[str]
    truncated: bool


class NetworkEnsured(WireModel):
    network_id: str
    name: str
    created: bool


class NetworkAttachment(WireModel):
    network: str
    workspace_id: str


class NetworkRemoved(WireModel):
    name: str
    removed: bool


class ImagePulled(WireModel):
    image: str
    image_id: str
    digest: str | None = None


class ImageInfo(WireModel):
    image_id: str
    exposed_ports: list[str]
    healthcheck: dict[str, Any] | None = None
    labels: dict[str, str]
    created: datetime | None = None
    size: int


class Service(WireModel):
    """A container discovered through its labels."""

    container_id: str
    container_name: str
    domain: str
    port: int
    description: str | None = None
    networks: dict[str, str] = Field(default_factory=dict)
    host_ports: dict[str, int] = Field(default_factory=dict)
    health: str | None = Field(default=None, description="Docker health status, when it has a healthcheck")


class ServiceList(WireModel):
    services: list[Service]


class HostInfo(WireModel):
    host_id: str
    docker_version: str
    api_version: str
    os: str
    cpus: int
    memory_bytes: int
    containers: int


ResultBody = (
    Workspace
    | WorkspaceRemoved
    | WorkspaceList
    | ExecOutput
    | LogLines
    | FilesWritten
    | FileContent
    | NetworkEnsured
    | NetworkAttachment
    | NetworkRemoved
    | ImagePulled
    | ImageInfo
    | ServiceList
    | HostInfo
    | SnapshotMade
    | ImageRemoved
)

RESULT_MODELS: dict[str, type[WireModel]] = {
    "workspace.create": Workspace,
    "workspace.start": Workspace,
    "workspace.stop": Workspace,
    "workspace.restart": Workspace,
    "workspace.remove": WorkspaceRemoved,
    "workspace.inspect": Workspace,
    "workspace.list": WorkspaceList,
    "workspace.exec": ExecOutput,
    "workspace.logs": LogLines,
    "workspace.put_files": FilesWritten,
    "workspace.get_file": FileContent,
    "workspace.extend": Workspace,
    "workspace.snapshot": SnapshotMade,
    "network.ensure": NetworkEnsured,
    "network.connect": NetworkAttachment,
    "network.disconnect": NetworkAttachment,
    "network.remove": NetworkRemoved,
    "image.pull": ImagePulled,
    "image.inspect": ImageInfo,
    "image.remove": ImageRemoved,
    "discovery.list": ServiceList,
    "host.info": HostInfo,
}
"""The result model of each command type."""


class Result(WireModel):
    """The answer to one command, published to the results exchange and to ``reply_to``."""

    command_id: str
    type: str
    status: Status
    host_id: str
    worker_id: str
    result: ResultBody | None = None
    error: ErrorInfo | None = None
    started_at: datetime
    finished_at: datetime
    duration_ms: float
    attempt: int = Field(default=1, ge=1)
