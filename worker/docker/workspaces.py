"""Workspaces: the ``workspace.*`` commands on their containers (create: see create.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError
from aiodocker.execs import Exec

from dockhand.schemas import ErrorCode
from dockhand.schemas.commands import (
    WorkspaceCreate,
    WorkspaceExec,
    WorkspaceExtend,
    WorkspaceListQuery,
    WorkspaceLogs,
    WorkspaceRemove,
    WorkspaceStop,
)
from dockhand.schemas.results import ExecOutput, LogLines, Workspace, WorkspaceList, WorkspaceRemoved

from .. import exec_kill, exec_stream, tenancy
from ..errors import DockhandError, from_exception, rejected
from .calls import JSON, DockerCalls
from .containers import Containers, Known
from .create import Creator
from .leases import Leases
from .volumes import Volumes


class Workspaces:
    """The workspaces of this host: create, start, stop, restart, remove, inspect, list, exec, logs."""

    def __init__(
        self, ops: DockerCalls, containers: Containers, volumes: Volumes, leases: Leases, creator: Creator
    ) -> None:
        self.ops = ops
        self.containers = containers
        self.volumes = volumes
        self.leases = leases
        self.creator = creator

    def check_create(self, p: WorkspaceCreate) -> WorkspaceCreate:
        """Policy for a create, before any Docker call (see :meth:`Creator.check`)."""
        return self.creator.check(p)

    async def create(self, p: WorkspaceCreate) -> Workspace:
        """``workspace.create``: all or nothing, or the same workspace adopted (see create.py)."""
        return await self.creator.create(p)

    async def _on_remembered(
        self, workspace_id: str, act: Callable[[str], Awaitable[None]], fall_back: frozenset[int]
    ) -> Known | None:
        """Act on the remembered container's id, without inspecting first (ownership checked on
        its remembered labels, which Docker never changes). ``None`` when nothing is remembered,
        or when Docker answers one of the ``fall_back`` statuses (404: the container is gone,
        perhaps replaced under its name; then it is forgotten): the caller inspects by name and
        decides as it always did."""
        known = self.containers.remembered(workspace_id)
        if known is None:
            return None
        try:
            await act(known.id)
        except DockhandError as exc:
            status = _docker_status(exc)
            if status not in fall_back:
                raise
            if status == 404:
                self.containers.forget(workspace_id)
            return None
        return known

    async def start(self, workspace_id: str) -> Workspace:
        """``workspace.start`` (already running: as it is)."""
        # Docker answers a start of a running container with 304 (no error); 409 (paused):
        # the inspecting way, which leaves a paused workspace as it is.
        start = self._on_remembered(
            workspace_id, lambda ref: self.containers.start(workspace_id, ref), frozenset({404, 409})
        )
        if await start is None:
            info = await self.containers.get(workspace_id)
            if info["State"].get("Running"):
                return self.containers.workspace(info)
            await self.containers.start(workspace_id, info["Id"])
        return self.containers.workspace(await self.containers.get(workspace_id))

    async def stop(self, p: WorkspaceStop) -> Workspace:
        """``workspace.stop`` (not running: as it is)."""
        subject = self.ops.subject(p.workspace_id)

        async def stop(ref: str) -> None:
            # Docker answers a stop of a container that is not running with 304 (no error).
            container = self.ops.docker.containers.container(ref)
            await self.ops.call("container.stop", lambda: container.stop(t=p.timeout_s), subject=subject)

        if await self._on_remembered(p.workspace_id, stop, frozenset({404})) is None:
            info = await self.containers.get(p.workspace_id)
            if not (info["State"].get("Running") or info["State"].get("Restarting")):
                return self.containers.workspace(info)
            await stop(info["Id"])
        return self.containers.workspace(await self.containers.get(p.workspace_id))

    async def restart(self, p: WorkspaceStop) -> Workspace:
        """``workspace.restart``."""
        subject = self.ops.subject(p.workspace_id)

        async def restart(ref: str) -> None:
            container = self.ops.docker.containers.container(ref)
            await self.ops.call(
                "container.restart", lambda: container.restart(t=p.timeout_s), subject=subject, refused="restart"
            )

        if await self._on_remembered(p.workspace_id, restart, frozenset({404})) is None:
            await restart((await self.containers.get(p.workspace_id))["Id"])
        return self.containers.workspace(await self.containers.get(p.workspace_id))

    async def remove(self, p: WorkspaceRemove) -> WorkspaceRemoved:
        """``workspace.remove``; with ``remove_volumes``, the named volumes its create made too."""
        subject = self.ops.subject(p.workspace_id)

        async def delete(ref: str) -> None:
            container = self.ops.docker.containers.container(ref)
            await self.ops.call(
                "container.delete", lambda: container.delete(force=p.force, v=p.remove_volumes), subject=subject
            )

        # 409 (running and no force, or a removal in progress): the inspecting way, which says so.
        known = await self._on_remembered(p.workspace_id, delete, frozenset({404, 409}))
        if known is not None:
            mounts = known.mounts
        else:
            info = await self.containers.find(p.workspace_id)
            if info is None:
                return WorkspaceRemoved(workspace_id=p.workspace_id, removed=False)
            if info["State"].get("Running") and not p.force:
                raise DockhandError(ErrorCode.CONFLICT, f"{subject} is running; stop it first or set force")
            await delete(info["Id"])
            mounts = info.get("Mounts") or []
        self.containers.forget(p.workspace_id)
        self.leases.forget(p.workspace_id)
        self.ops.census.discard(p.workspace_id)
        await self.leases.drop_leases(p.workspace_id)
        if p.remove_volumes:
            for mount in mounts:
                if mount.get("Type") == "volume" and mount.get("Name"):
                    await self.volumes.remove_own(mount["Name"], p.workspace_id)
        return WorkspaceRemoved(workspace_id=p.workspace_id, removed=True)

    async def extend(self, p: WorkspaceExtend) -> Workspace:
        """``workspace.extend``: it now expires ``ttl_s`` seconds from now (see leases.py)."""
        return await self.leases.extend(p.workspace_id, p.ttl_s)

    async def inspect(self, workspace_id: str) -> Workspace:
        """``workspace.inspect``."""
        return self.containers.workspace(await self.containers.get(workspace_id))

    async def query(self, q: WorkspaceListQuery) -> WorkspaceList:
        """``workspace.list``: this host's workspaces (the sender's only, under tenancy)."""
        labels = self.ops.labels
        label_filters: list[str] = []
        if q.project:
            label_filters.append(f"{labels.project}={q.project}")
        if q.stage:
            label_filters.append(f"{labels.stage}={q.stage}")
        sender = tenancy.restricted()
        if sender is not None:
            label_filters.append(f"{labels.owner}={sender.user}")
        filters: dict[str, list[str]] = {"label": label_filters}
        if q.state:
            filters["status"] = [q.state]
        infos = await self.containers.inspect_each(await self.containers.list_managed(**filters))
        workspaces = [
            self.containers.workspace(info)
            for info in infos
            if self.ops.owns(info["Config"].get("Labels"))  # the filter, checked again
        ]
        return WorkspaceList(workspaces=sorted(workspaces, key=lambda w: w.workspace_id))

    async def logs(self, p: WorkspaceLogs) -> LogLines:
        """``workspace.logs``: the newest lines, within DOCKHAND_EXEC_OUTPUT_LIMIT_BYTES."""
        info = await self.containers.get(p.workspace_id)
        container = self.ops.docker.containers.container(info["Id"])
        params: JSON = {"tail": str(p.tail)}
        if p.since is not None:
            params["since"] = str(int(p.since.timestamp()))
        chunks: list[str] = await self.ops.call(
            "container.logs",
            lambda: container.log(stdout=True, stderr=True, **params),
            subject=self.ops.subject(p.workspace_id),
        )
        lines = "".join(chunks).splitlines()
        limit = self.ops.settings.exec_output_limit_bytes
        kept: list[str] = []
        size = 0
        # Keep the newest lines when the output is over the limit: the tail is what people want.
        for line in reversed(lines):
            size += len(line) + 1
            if size > limit:
                break
            kept.append(line)
        return LogLines(lines=kept[::-1], truncated=len(kept) < len(lines))

    async def exec(self, p: WorkspaceExec) -> ExecOutput:
        """``workspace.exec``: run a command in the running workspace; its output returned
        (capped), streamed to ``reply_to`` (``stream``), or not kept at all (``detach``)."""
        target = exec_stream.REPLY.get()
        if p.stream and (target is None or not target.reply_to):
            raise rejected(ErrorCode.INVALID_COMMAND, "stream: true needs a reply_to to stream the output to")
        info = await self.containers.get(p.workspace_id)
        subject = self.ops.subject(p.workspace_id)
        if not info["State"].get("Running"):
            raise DockhandError(ErrorCode.CONFLICT, f"{subject} is not running")
        container = self.ops.docker.containers.container(info["Id"])
        # Tags the exec's processes (children inherit it) for exec_kill's in-container fallback.
        token = exec_kill.new_token()
        attach = not p.detach  # a detached exec's output is not kept: Docker need not hold it
        execution = await self.ops.call(
            "container.exec",
            lambda: container.exec(
                p.command,
                stdout=attach,
                stderr=attach,
                environment={**p.env, exec_kill.MARKER: token},
                user=p.user or "",
                workdir=p.working_dir,
            ),
            subject=subject,
        )
        if p.detach:
            # Docker runs it inside the container, independent of this API connection (and of
            # this worker's life); timeout_s does not apply to it.
            await self.ops.call("exec.start", lambda: execution.start(detach=True), subject=subject)
            return ExecOutput(exec_id=execution.id)
        sender = (
            exec_stream.ChunkSender(target, exec_stream.OutputBuffer(self.ops.settings.exec_output_limit_bytes))
            if p.stream and target
            else None
        )
        run = _Run(p, subject, container, execution, token, sender)
        out, truncated = await run.collect(self.ops.settings.exec_output_limit_bytes)
        result = await self.ops.call("exec.inspect", execution.inspect, subject=subject)
        return ExecOutput(
            exit_code=int(result.get("ExitCode") or 0),
            stdout=out[1].decode("utf-8", "replace"),
            stderr=out[2].decode("utf-8", "replace"),
            truncated=truncated,
        )


def _docker_status(exc: BaseException) -> int | None:
    """The HTTP status of the Docker answer behind an error, if there was one."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, DockerError):
        cause = cause.__cause__
    return cause.status if cause is not None else None


class _Run:
    """One attached exec: its output read to the end (kept, or streamed), within ``timeout_s``."""

    def __init__(
        self,
        p: WorkspaceExec,
        subject: str,
        container: DockerContainer,
        execution: Exec,
        token: str,
        sender: exec_stream.ChunkSender | None,
    ) -> None:
        self.p, self.subject, self.container = p, subject, container
        self.execution, self.token, self.sender = execution, token, sender

    async def collect(self, limit: int) -> tuple[dict[int, bytearray], bool]:
        """Stdout (1) and stderr (2), each up to ``limit`` bytes, and whether any was cut."""
        p, sender = self.p, self.sender
        out = {1: bytearray(), 2: bytearray()}
        truncated = False
        try:
            async with asyncio.timeout(p.timeout_s), self.execution.start(detach=False) as stream:
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
            raise await self._timed_out() from exc
        except asyncio.CancelledError:
            # Drain gave up on it: do not leave it running for the redelivery to start again.
            await asyncio.shield(self._kill())
            raise
        except DockerError as exc:
            raise from_exception(exc, subject=self.subject) from exc
        finally:
            if sender is not None:
                await sender.cancel()  # a no-op once finished
        return out, truncated

    async def _kill(self) -> bool:
        return await exec_kill.kill_quietly(
            self.container, self.container.id, self.execution, self.token, self.p.user or ""
        )

    async def _timed_out(self) -> DockhandError:
        # Docker leaves a timed-out exec running (there is no exec kill): end it and its children.
        ended = await self._kill()
        if self.sender is not None:
            await self.sender.finish()  # what it wrote before it was killed, then the result
        outcome = "it was killed" if ended else "it could not be killed and may still be running"
        return DockhandError(
            ErrorCode.TIMEOUT,
            f"{self.subject}: exec did not finish within {self.p.timeout_s} s; {outcome}",
            retryable=False,
        )
