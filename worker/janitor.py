"""The garbage pass of the host's active worker: every DOCKHAND_GC_INTERVAL_S it reports what
this host made and nothing uses (worker/docker/garbage.py), and removes it with DOCKHAND_GC=true."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from .background import Background
from .docker import DockerOps
from .docker.garbage import Collector, Garbage

log = logging.getLogger("dockhand.gc")


class Janitor(Background):
    """Finds (and, when allowed, removes) the host's unused networks, volumes and snapshots."""

    def __init__(self, ops: DockerOps) -> None:
        super().__init__()
        self.ops = ops
        self.collector = Collector(ops)
        self.last: Garbage | None = None
        """What the latest pass found."""

    def _jobs(self) -> list[Coroutine[Any, Any, None]]:
        return [self._run()]

    async def _run(self) -> None:
        settings = self.ops.settings
        while True:
            await asyncio.sleep(settings.gc_interval_s)
            try:
                self.last = found = await self.collector.collect(remove=settings.gc)
            except Exception as exc:  # Docker away: the next pass tries again
                log.warning("garbage pass failed: %s", exc)
                continue
            if found:
                log.info(
                    "unused and older than %.0f s: networks %s, volumes %s, snapshots %s; %s",
                    settings.gc_grace_s,
                    found.networks or "none",
                    found.volumes or "none",
                    found.snapshots or "none",
                    f"removed {len(found.removed)}" if settings.gc else "DOCKHAND_GC=true would remove them",
                )
