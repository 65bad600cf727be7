"""Just enough of the DockerOps facade for dispatcher tests that are about the dispatcher, not Docker."""

from __future__ import annotations

import asyncio

from dockhand.schemas import ErrorCode
from dockhand.schemas import commands as c
from dockhand.schemas.results import ExecOutput, HostInfo
from dockhand.worker.errors import rejected


class FakeHost:
    """``ops.host``: ``host.info`` answers at once."""

    async def info(self) -> HostInfo:
        return HostInfo(
            host_id="host-a", docker_version="1", api_version="1", os="x", cpus=1, memory_bytes=1, containers=0
        )


class FakeWorkspaces:
    """``ops.workspaces``: an exec that waits for :attr:`gate` (its argv recorded in :attr:`execs`)."""

    def __init__(self) -> None:
        self.execs: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def exec(self, p: c.WorkspaceExec) -> ExecOutput:
        self.execs.append(p.command)
        await self.gate.wait()
        return ExecOutput(exit_code=0, stdout=" ".join(p.command), stderr="", truncated=False)


class FakeOps:
    """``host.info``, ``workspace.exec`` held by :attr:`gate`, and a policy that forbids every
    ``workspace.create``; :attr:`execs` and :attr:`gate` are the workspaces'."""

    def __init__(self) -> None:
        self.host = FakeHost()
        self.workspaces = FakeWorkspaces()
        self.execs = self.workspaces.execs
        self.gate = self.workspaces.gate

    def check_create(self, p: c.WorkspaceCreate) -> None:
        raise rejected(ErrorCode.FORBIDDEN, "labels under dockhand. are reserved")
