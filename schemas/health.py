"""Health heartbeat (out)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from ._base import WireModel


class DockerHealth(WireModel):
    reachable: bool
    version: str | None = None
    api_version: str | None = None
    latency_ms: float | None = None
    containers_running: int | None = None


class CommandCounters(WireModel):
    in_flight: int = 0
    succeeded: int = 0
    failed: int = 0
    rejected: int = 0
    expired: int = 0


class EventStreamHealth(WireModel):
    stream_connected: bool
    last_event_at: datetime | None = None
    lag_ms: float | None = None
    published: int = 0


class BrokerHealth(WireModel):
    """The worker's side of the broker (contract v1.1, several broker nodes)."""

    node: str | None = Field(
        default=None, description="host:port of the broker node the worker is connected to; null while reconnecting"
    )
    consuming: bool = Field(
        description="whether the worker consumes its command queues now (false for a standby, and for an "
        "active worker whose consumer is lost until the watchdog re-creates it)"
    )


class WorkspaceCount(WireModel):
    """How many workspaces the host holds (``None`` until first read), and its limit, if any."""

    count: int | None = None
    limit: int | None = Field(default=None, description="DOCKHAND_MAX_WORKSPACES; absent: no limit")


class Heartbeat(WireModel):
    """Published on ``<host_id>.heartbeat`` every interval and at once on a status change."""

    host_id: str
    worker_id: str
    status: Literal["healthy", "degraded", "unhealthy"]
    role: Literal["active", "standby"] = Field(
        default="active", description="standby: a hot standby of this host, not publishing its events"
    )
    time: datetime
    uptime_s: float
    version: str
    docker: DockerHealth
    commands: CommandCounters
    events: EventStreamHealth
    broker: BrokerHealth | None = None
    workspaces: WorkspaceCount = Field(default_factory=WorkspaceCount)
