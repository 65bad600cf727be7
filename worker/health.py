"""Health heartbeats on ``<host_id>.heartbeat``: every interval, and at once on a status change.

Docker is probed every second (``/version``: reachability, latency, version in one call), so a
status change is published within about a second and commands fail fast with
``docker_unavailable`` while the daemon is down instead of each waiting out its retries.
Recovery does not wait for the probe: the event stream reconnecting, or any call that Docker
answers, marks Docker available at once and wakes the monitor, which publishes the new status
right away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from dockhand.schemas import Heartbeat, Status, utcnow
from dockhand.schemas.health import BrokerHealth, CommandCounters, DockerHealth, EventStreamHealth, WorkspaceCount

from .background import Background
from .docker import DockerOps
from .events import StreamState
from .publishing import Publish
from .settings import Settings
from .settle import Counters

log = logging.getLogger("dockhand.health")

HealthStatus = Literal["healthy", "degraded", "unhealthy"]


@dataclass(eq=False)
class HealthMonitor(Background):
    """Probes Docker, derives the status and publishes heartbeats."""

    ops: DockerOps
    settings: Settings
    counters: Counters
    stream: StreamState
    _publish: Publish
    version: str
    status: HealthStatus | None = field(default=None, init=False)
    docker: DockerHealth = field(default_factory=lambda: DockerHealth(reachable=True), init=False)
    is_leader: Callable[[], bool] = field(default_factory=lambda: lambda: True, init=False)
    # The broker node and whether this worker consumes (set by the worker's Runtime).
    broker_state: Callable[[], BrokerHealth | None] = field(default_factory=lambda: lambda: None, init=False)

    def __post_init__(self) -> None:
        super().__init__()
        self._started = time.monotonic()
        # Set when Docker's availability or the stream's connection flips: probe and publish now.
        self._wake = asyncio.Event()
        self.ops.on_availability(lambda _available: self._wake.set())
        self.stream.listeners.append(self._wake.set)

    def _jobs(self) -> list[Coroutine[Any, Any, None]]:
        return [self._run()]

    async def probe(self) -> DockerHealth:
        """One Docker probe; also switches fail-fast on or off for commands."""
        for _ in range(2):
            began = time.perf_counter()
            started = time.monotonic()
            try:
                async with asyncio.timeout(min(2.0, self.settings.health_interval_s)):
                    version = await self.ops.docker.version()
            except Exception as exc:
                if not self.ops.mark_unavailable(started):
                    continue  # Docker answered something else meanwhile: this failure is stale, ask again
                if self.docker.reachable:
                    log.warning("docker unreachable: %s: %s", type(exc).__name__, exc)
                return DockerHealth(reachable=False)
            break
        else:
            return DockerHealth(reachable=False)
        self.ops.mark_available()
        return DockerHealth(
            reachable=True,
            version=str(version.get("Version", "")),
            api_version=str(version.get("ApiVersion", "")),
            latency_ms=round((time.perf_counter() - began) * 1000, 3),
            containers_running=self.docker.containers_running,
        )

    def _derive(self) -> HealthStatus:
        if not self.docker.reachable:
            return "unhealthy"
        if self.is_leader() and not self.stream.connected:
            return "degraded"  # a standby runs no event stream: that is not a fault
        return "healthy"

    async def _containers_running(self) -> int | None:
        try:
            info = await self.ops.docker.system.info()
        except Exception:
            return None
        return int(info.get("ContainersRunning") or 0)

    async def _run(self) -> None:
        interval = self.settings.health_interval_s
        tick = min(1.0, interval)
        last_sent = 0.0
        while True:
            try:
                self.docker = await self.probe()
                status = self._derive()
                due = time.monotonic() - last_sent >= interval
                if status != self.status or due:
                    if self.docker.reachable:
                        self.docker = self.docker.model_copy(
                            update={"containers_running": await self._containers_running()}
                        )
                    if status != self.status and self.status is not None:
                        log.warning("health %s -> %s", self.status, status)
                    self.status = status
                    await self._publish(f"{self.settings.host_id}.heartbeat", self.heartbeat())
                    last_sent = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat failed")
            # A flip of availability or of the stream wakes the loop early (cleared only here,
            # so one that happens while probing or publishing is not lost). Not wait_for: on 3.11
            # it swallows a cancel that arrives when the wake is already set (stop() would hang).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._wake.wait()
            self._wake.clear()

    def heartbeat(self) -> Heartbeat:
        by_status = self.counters.by_status
        return Heartbeat(
            host_id=self.settings.host_id,
            worker_id=self.settings.effective_worker_id,
            status=self.status or self._derive(),
            role="active" if self.is_leader() else "standby",
            time=utcnow(),
            uptime_s=round(time.monotonic() - self._started, 3),
            version=self.version,
            docker=self.docker,
            commands=CommandCounters(
                in_flight=self.counters.in_flight,
                succeeded=by_status[Status.SUCCEEDED],
                failed=by_status[Status.FAILED],
                rejected=by_status[Status.REJECTED],
                expired=by_status[Status.EXPIRED],
            ),
            workspaces=WorkspaceCount(count=self.ops.census.count, limit=self.ops.census.limit),
            events=EventStreamHealth(
                stream_connected=self.stream.connected,
                last_event_at=self.stream.last_event_at,
                lag_ms=self.stream.lag_ms,
                published=self.stream.published,
            ),
            broker=self.broker_state(),
        )
