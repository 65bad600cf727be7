"""One thin handler per command type, typed by its payload model.

Handlers only translate a payload into a Docker operation; parsing, ordering, idempotency,
result publishing and acknowledgement are the dispatcher's job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from dockhand.schemas import WireModel
from dockhand.schemas.commands import (
    Empty,
    ImagePull,
    ImageRef_,
    ImageRemove,
    NetworkConnect,
    NetworkDisconnect,
    NetworkEnsure,
    NetworkRemove,
    WorkspaceCreate,
    WorkspaceExec,
    WorkspaceExtend,
    WorkspaceGetFile,
    WorkspaceListQuery,
    WorkspaceLogs,
    WorkspacePutFiles,
    WorkspaceRef,
    WorkspaceRemove,
    WorkspaceSnapshot,
    WorkspaceStop,
)
from dockhand.schemas.results import ServiceList

from . import discovery
from .docker import DockerOps

P = TypeVar("P", bound=WireModel)
Handler = Callable[[Any, DockerOps], Awaitable[WireModel]]


def _on(payload: type[P], handler: Callable[[P, DockerOps], Awaitable[WireModel]]) -> Handler:
    """A handler for commands whose payload is a ``payload`` (so the handler is type-checked)."""
    return handler


async def _discovery_list(p: Empty, ops: DockerOps) -> WireModel:
    return ServiceList(
        services=await discovery.list_services(ops, require_healthy=ops.settings.discovery_require_healthy)
    )


HANDLERS: dict[str, Handler] = {
    "workspace.create": _on(WorkspaceCreate, lambda p, ops: ops.workspaces.create(p)),
    "workspace.start": _on(WorkspaceRef, lambda p, ops: ops.workspaces.start(p.workspace_id)),
    "workspace.stop": _on(WorkspaceStop, lambda p, ops: ops.workspaces.stop(p)),
    "workspace.restart": _on(WorkspaceStop, lambda p, ops: ops.workspaces.restart(p)),
    "workspace.remove": _on(WorkspaceRemove, lambda p, ops: ops.workspaces.remove(p)),
    "workspace.inspect": _on(WorkspaceRef, lambda p, ops: ops.workspaces.inspect(p.workspace_id)),
    "workspace.list": _on(WorkspaceListQuery, lambda p, ops: ops.workspaces.query(p)),
    "workspace.exec": _on(WorkspaceExec, lambda p, ops: ops.workspaces.exec(p)),
    "workspace.logs": _on(WorkspaceLogs, lambda p, ops: ops.workspaces.logs(p)),
    "workspace.extend": _on(WorkspaceExtend, lambda p, ops: ops.workspaces.extend(p)),
    "workspace.snapshot": _on(WorkspaceSnapshot, lambda p, ops: ops.snapshots.make(p)),
    "workspace.put_files": _on(WorkspacePutFiles, lambda p, ops: ops.files.put(p)),
    "workspace.get_file": _on(WorkspaceGetFile, lambda p, ops: ops.files.get(p)),
    "network.ensure": _on(NetworkEnsure, lambda p, ops: ops.networks.ensure(p)),
    "network.connect": _on(NetworkConnect, lambda p, ops: ops.networks.connect(p.network, p.workspace_id, p.aliases)),
    "network.disconnect": _on(NetworkDisconnect, lambda p, ops: ops.networks.disconnect(p.network, p.workspace_id)),
    "network.remove": _on(NetworkRemove, lambda p, ops: ops.networks.remove(p.name)),
    "image.pull": _on(ImagePull, lambda p, ops: ops.images.pulled(p.image, p.registry_auth)),
    "image.inspect": _on(ImageRef_, lambda p, ops: ops.images.inspect(p.image)),
    "image.remove": _on(ImageRemove, lambda p, ops: ops.snapshots.remove(p.image)),
    "discovery.list": _discovery_list,
    "host.info": _on(Empty, lambda p, ops: ops.host.info()),
}
"""Command type -> handler: each one payload in, one Docker operation (``ops.<resource>``) out."""


def check_policy(command_type: str, payload: WireModel, ops: DockerOps) -> None:
    """Policy checks that need no Docker call, so violations are rejected up front."""
    if isinstance(payload, WorkspaceCreate):
        ops.check_create(payload)
    elif isinstance(payload, ImagePull | ImageRef_ | ImageRemove):
        ops.policy.check_image(payload.image)
    elif isinstance(payload, NetworkEnsure):
        ops.policy.check_labels(payload.labels, f"network {payload.name}")
    elif isinstance(payload, WorkspacePutFiles):
        ops.check_files(payload)


def lane_key(command_type: str, payload: WireModel) -> str | None:
    """Commands with the same key run one at a time, in queue order; ``None`` runs freely."""
    workspace_id = getattr(payload, "workspace_id", None)
    if workspace_id is not None:
        return f"workspace:{workspace_id}"
    if command_type in {"network.ensure", "network.remove"}:
        return f"network:{getattr(payload, 'name', '')}"
    return None
