"""Workspace expiry (contract v1.1 ``ttl_s``): the active worker stops or removes each workspace
at its deadline and publishes ``<host>.workspace.expired`` once.

The deadlines live in Docker (worker/docker/leases.py), so this loop needs nothing from the
worker that set them: on becoming active it scans them (a workspace already past its deadline
is expired at once), then sleeps until the next deadline, a new or moved one (a create or an
extend wakes it), or the next periodic scan (which catches what another worker did meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from dockhand.schemas import utcnow
from dockhand.schemas.events import WorkspaceExpired

from .background import Background
from .docker import DockerOps
from .docker.leases import Deadline
from .publishing import Publish

log = logging.getLogger("dockhand.expiry")


@dataclass(eq=False)
class Expiry(Background):
    """Enforces the host's workspace deadlines while this worker is active."""

    ops: DockerOps
    publish: Publish
    rescan_s: float
    stop_timeout_s: int

    def __post_init__(self) -> None:
        super().__init__()

    def _jobs(self) -> list[Coroutine[Any, Any, None]]:
        return [self._run()]

    async def _run(self) -> None:
        leases = self.ops.leases
        loop = asyncio.get_running_loop()
        next_scan = 0.0
        while True:
            if loop.time() >= next_scan:
                try:
                    await leases.scan()
                    next_scan = loop.time() + self.rescan_s
                except Exception as exc:  # Docker away: the deadlines stay as known; try again soon
                    log.warning("workspace deadlines not read: %s", exc)
                    next_scan = loop.time() + min(self.rescan_s, 2.0)
            now = utcnow()
            for deadline in sorted(leases.deadlines.values(), key=lambda d: d.expires_at):
                if deadline.expires_at > now:
                    break
                await self._expire(deadline)
            upcoming = [d.expires_at for d in leases.deadlines.values()]
            wait_s = next_scan - loop.time()
            if upcoming:
                wait_s = min(wait_s, (min(upcoming) - utcnow()).total_seconds())
            leases.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait_s, 0.05)):
                    await leases.changed.wait()

    async def _expire(self, deadline: Deadline) -> None:
        """Stop or remove one workspace past its deadline; publish ``workspace.expired`` when this
        call did it (a workspace already stopped is not expired again, nor announced twice)."""
        leases = self.ops.leases
        try:
            action = await self._act(deadline)
        except Exception as exc:
            # Left in place: the next turn tries again (Docker may be back by then).
            log.warning("workspace %s: expiry failed: %s", deadline.workspace_id, exc)
            await asyncio.sleep(1.0)
            return
        # Done with this deadline either way: a stopped workspace waits for an extend (which
        # notes a new deadline); a removed or vanished one is gone.
        leases.forget(deadline.workspace_id)
        if action is None:
            return
        log.info("workspace %s expired (%s)", deadline.workspace_id, action)
        event = WorkspaceExpired(
            event_id=str(uuid.uuid4()),
            host_id=self.ops.host_id,
            time=utcnow(),
            workspace_id=deadline.workspace_id,
            action=action,
        )
        await self.publish(f"{self.ops.host_id}.workspace.expired", event)

    async def _act(self, deadline: Deadline) -> Literal["stopped", "removed"] | None:
        """``stopped`` / ``removed``, or ``None`` when there was nothing to do."""
        containers = self.ops.containers
        info = await containers.find(deadline.workspace_id)
        if info is None or info["Id"] != deadline.container_id:
            return None  # gone, or made again since: that container has its own deadline, if any
        current = self.ops.leases.of(info)
        if current is None or current.expires_at > utcnow():
            return None  # moved meanwhile (an extend)
        container = self.ops.docker.containers.container(info["Id"])
        subject = self.ops.subject(deadline.workspace_id)
        if deadline.action == "remove":
            await self.ops.call("container.delete", lambda: container.delete(force=True), subject=subject)
            self.ops.census.discard(deadline.workspace_id)
            await self.ops.leases.drop_leases(deadline.workspace_id)
            return "removed"
        state = info.get("State") or {}
        if not (state.get("Running") or state.get("Restarting") or state.get("Paused")):
            return None  # stopped already: expired before, or stopped by its owner
        await self.ops.call("container.stop", lambda: container.stop(t=self.stop_timeout_s), subject=subject)
        return "stopped"
