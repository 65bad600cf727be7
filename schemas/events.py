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
    seq: int | None = Field(default=None, description=_SEQ)
    epoch: str | None = Field(default=None, description=_EPOCH)


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
    seq: int | None = Field(default=None, description=_SEQ)
    epoch: str | None = Field(default=None, description=_EPOCH)


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
    seq: int | None = Field(default=None, description=_SEQ)
    epoch: str | None = Field(default=None, description=_EPOCH)


class DiscoverySnapshot(WireModel):
    """The whole current service set, so a consumer that missed messages can rebuild."""

    event_id: str
    host_id: str
    type: Literal["discovery.snapshot"] = "discovery.snapshot"
    time: datetime
    services: list[Service]
    reason: Literal["startup", "resync", "periodic"]
    seq: int | None = Field(default=None, description=_SEQ)
    epoch: str | None = Field(default=None, description=_EPOCH)
