"""Event messages (out): container and network events, label discovery."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from ._base import WireModel
from .results import Service

# Contract v1.1 "Event sequence numbers": optional in the model so that v1 messages (and older
# fixtures) still parse; the worker always sets both.
_SEQ = (
    "Counts up by one per message of this host's event family (the routing key's second word, "
    "snapshots included), starting at 1 in each epoch; a gap means messages were missed: resync."
)
_EPOCH = (
    "Changes whenever the publisher of this host's events changes (worker restart, fail-over); "
    "a new epoch means messages may have been missed: resync."
)


class Event(WireModel):
    """The fields every message on the events exchange shares."""

    event_id: str
    host_id: str
    type: str
    time: datetime
    seq: int | None = Field(default=None, description=_SEQ)
    epoch: str | None = Field(default=None, description=_EPOCH)


class ContainerRef(WireModel):
    id: str
    name: str | None = None
    image: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    workspace_id: str | None = None


class ContainerEvent(Event):
    """A Docker container event (``container.<action>``; health as ``container.health.<x>``)."""

    container: ContainerRef
    attributes: dict[str, Any] = Field(default_factory=dict)


class NetworkRef(WireModel):
    id: str
    name: str | None = None
    type: str | None = None


class NetworkEvent(Event):
    """A Docker network event (``network.create|destroy|connect|disconnect``)."""

    network: NetworkRef
    container_id: str | None = None
    workspace_id: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class WorkspaceExpired(Event):
    """A workspace reached its deadline (``ttl_s``) and was stopped or removed; published once."""

    type: Literal["workspace.expired"] = "workspace.expired"
    workspace_id: str
    action: Literal["stopped", "removed"]


class InvalidService(WireModel):
    container_id: str
    container_name: str


class DiscoveryEvent(Event):
    """A change of the discovered service set; ``invalid`` carries a reason instead of a service."""

    type: Literal["discovery.added", "discovery.removed", "discovery.updated", "discovery.invalid"]
    service: Service | None = None
    container: InvalidService | None = None
    reason: str | None = None


class DiscoverySnapshot(Event):
    """The whole current service set, so a consumer that missed messages can rebuild."""

    type: Literal["discovery.snapshot"] = "discovery.snapshot"
    services: list[Service]
    reason: Literal["startup", "resync", "periodic"]
