"""The Docker host: ``host.info``, and the facts about it that a create needs (cached)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from dockhand.schemas.results import HostInfo

from . import models
from .calls import DockerCalls


class Host:
    """What the Docker host is: its version and size, its data directory, its CPUs."""

    def __init__(self, ops: DockerCalls) -> None:
        self.ops = ops
        self._docker_root_dir: str | None = None
        self._cpus: int | None = None

    async def info(self) -> HostInfo:
        """The ``host.info`` result."""
        subject = f"host {self.ops.host_id}"
        info, version = await asyncio.gather(
            self._system_info(),
            self.ops.call("system.version", self.ops.docker.version, subject=subject),
        )
        return models.host_info(self.ops.host_id, info, version)

    async def _system_info(self) -> Mapping[str, Any]:
        info: Mapping[str, Any] = await self.ops.call(
            "system.info", self.ops.docker.system.info, subject=f"host {self.ops.host_id}"
        )
        return info

    async def docker_root(self) -> str | None:
        """Docker's data directory, resolved (where every volume lives); ``None`` if unknown."""
        if self._docker_root_dir is None:
            root = (await self._system_info()).get("DockerRootDir")
            self._docker_root_dir = await asyncio.to_thread(os.path.realpath, root) if root else ""
        return self._docker_root_dir or None

    async def cpu_cap(self) -> float:
        """The CPU maximum: the setting, but never above what the host has (Docker refuses)."""
        if self._cpus is None:
            self._cpus = int((await self._system_info()).get("NCPU") or 1)
        return min(self.ops.settings.max_cpus, float(self._cpus))
