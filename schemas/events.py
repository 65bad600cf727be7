"""Event messages (out): container and network events, label discovery."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from ._base import WireModel
from .results import Service


class ContainerRef(WireModel):
    id: str
    name: str | None = None
    image: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    workspace_id: str | None = None


class ContainerEvent(WireModel):
    """A Docker container event (``container.<action>``; health as ``container.health.<x>``)."""

    event_id: str
    host_id: str
    type: str
    time: datetime
    container: ContainerRef
    attributes: dict[str, Any] = Field(default_factory=dict)


class NetworkRef(WireModel):
    id: str
    name: str | None = None
    type: str | None = None


class NetworkEvent(WireModel):
    """A Docker network event (``network.create|destroy|connect|disconnect``)."""

    event_id: str
    host_id: str
    type: str
    time: datetime
    network: NetworkRef
    container_id: str | None = None
    workspace_id: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class InvalidService(WireModel):
    container_id: str
    container_name: str


class DiscoveryEvent(WireModel):
    """A change of the discovered service set; ``invalid`` carries a reason instead of a service."""

    event_id: str
    host_id: str
    type: Literal["discovery.added", "discovery.removed", "discovery.updated", "discovery.invalid"]
    time: datetime
    service: Service | None = None
    container: InvalidService | None = None
    reason: str | None = None


class DiscoverySnapshot(WireModel):
    """The whole current service set, so a consumer that missed messages can rebuild."""

    event_id: str
    host_id: str
    type: Literal["discovery.snapshot"] = "discovery.snapshot"
    time: datetime
    services: list[Service]
    reason: Literal["startup", "resync", "periodic"]
