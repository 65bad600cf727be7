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
    NetworkConnect,
    NetworkDisconnect,
    NetworkEnsure,
    NetworkRemove,
    WorkspaceCreate,
    WorkspaceExec,
    WorkspaceGetFile,
    WorkspaceListQuery,
    WorkspaceLogs,
    WorkspacePutFiles,
    WorkspaceRef,
    WorkspaceRemove,
    WorkspaceStop,
)
from dockhand.schemas.results import ServiceList

from . import discovery
from .docker_ops import DockerOps

P = TypeVar("P", bound=WireModel)
Handler = Callable[[Any, DockerOps], Awaitable[WireModel]]
HANDLERS: dict[str, Handler] = {}


def handles(*types: str) -> Callable[[Callable[[P, DockerOps], Awaitable[WireModel]]], Handler]:
    """Register a handler for one or more command types."""

    def register(fn: Callable[[P, DockerOps], Awaitable[WireModel]]) -> Handler:
        for name in types:
            HANDLERS[name] = fn
        return fn

    return register


@handles("workspace.create")
async def workspace_create(p: WorkspaceCreate, ops: DockerOps) -> WireModel:
    return await ops.create_workspace(p)


@handles("workspace.start")
async def workspace_start(p: WorkspaceRef, ops: DockerOps) -> WireModel:
    return await ops.start_workspace(p.workspace_id)


@handles("workspace.stop")
async def workspace_stop(p: WorkspaceStop, ops: DockerOps) -> WireModel:
    return await ops.stop_workspace(p)


@handles("workspace.restart")
async def workspace_restart(p: WorkspaceStop, ops: DockerOps) -> WireModel:
    return await ops.restart_workspace(p)


@handles("workspace.remove")
async def workspace_remove(p: WorkspaceRemove, ops: DockerOps) -> WireModel:
    return await ops.remove_workspace(p)


@handles("workspace.inspect")
async def workspace_inspect(p: WorkspaceRef, ops: DockerOps) -> WireModel:
    return await ops.inspect_workspace(p.workspace_id)


@handles("workspace.list")
async def workspace_list(p: WorkspaceListQuery, ops: DockerOps) -> WireModel:
    return await ops.list_workspaces(p)


@handles("workspace.exec")
async def workspace_exec(p: WorkspaceExec, ops: DockerOps) -> WireModel:
    return await ops.exec_workspace(p)


@handles("workspace.logs")
async def workspace_logs(p: WorkspaceLogs, ops: DockerOps) -> WireModel:
    return await ops.workspace_logs(p)


@handles("workspace.put_files")
async def workspace_put_files(p: WorkspacePutFiles, ops: DockerOps) -> WireModel:
    return await ops.put_files(p)


@handles("workspace.get_file")
async def workspace_get_file(p: WorkspaceGetFile, ops: DockerOps) -> WireModel:
    return await ops.get_file(p)


@handles("network.ensure")
async def network_ensure(p: NetworkEnsure, ops: DockerOps) -> WireModel:
    return await ops.ensure_network(p)


@handles("network.connect")
async def network_connect(p: NetworkConnect, ops: DockerOps) -> WireModel:
    return await ops.connect_network(p.network, p.workspace_id, p.aliases)


@handles("network.disconnect")
async def network_disconnect(p: NetworkDisconnect, ops: DockerOps) -> WireModel:
    return await ops.disconnect_network(p.network, p.workspace_id)


@handles("network.remove")
async def network_remove(p: NetworkRemove, ops: DockerOps) -> WireModel:
    return await ops.remove_network(p.name)


@handles("image.pull")
async def image_pull(p: ImagePull, ops: DockerOps) -> WireModel:
    return await ops.pull_image(p.image, p.registry_auth)


@handles("image.inspect")
async def image_inspect(p: ImageRef_, ops: DockerOps) -> WireModel:
    return await ops.inspect_image(p.image)


@handles("discovery.list")
async def discovery_list(p: Empty, ops: DockerOps) -> WireModel:
    return ServiceList(
        services=await discovery.list_services(ops, require_healthy=ops.settings.discovery_require_healthy)
    )


@handles("host.info")
async def host_info(p: Empty, ops: DockerOps) -> WireModel:
    return await ops.host_info()


def check_policy(command_type: str, payload: WireModel, ops: DockerOps) -> None:
    """Policy checks that need no Docker call, so violations are rejected up front."""
    if isinstance(payload, WorkspaceCreate):
        ops.check_create(payload)
    elif isinstance(payload, ImagePull | ImageRef_):
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
