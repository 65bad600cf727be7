"""Event messages as typed models, and the bindings that select them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dockhand.schemas import ContainerEvent, DiscoveryEvent, DiscoverySnapshot, Heartbeat, NetworkEvent
from dockhand.schemas.events import WorkspaceExpired

from ._parse import _lenient

EVENT_FAMILIES = ("container", "network", "discovery", "workspace")
"""The families of ``<prefix>.events`` (the routing key's second word); ``health`` is heartbeats."""


@dataclass(frozen=True)
class OtherEvent:
    """An event this client version has no model for (a newer worker's), or one that did not parse."""

    routing_key: str
    body: dict[str, Any]

    @property
    def host_id(self) -> str:
        """The publishing host."""
        return str(self.body.get("host_id") or self.routing_key.split(".", 1)[0])

    @property
    def type(self) -> str:
        """The event type (``workspace.expired`` ...)."""
        return str(self.body.get("type") or self.routing_key.split(".", 1)[-1])


Event = ContainerEvent | NetworkEvent | DiscoveryEvent | DiscoverySnapshot | WorkspaceExpired | Heartbeat | OtherEvent
"""What :meth:`Client.events` yields."""


def bindings(hosts: Iterable[str] | None, kinds: Iterable[str]) -> list[tuple[str, str]]:
    """(exchange suffix, routing key) pairs for these hosts (None: all) and kinds."""
    who = list(hosts) if hosts is not None else ["*"]
    pairs = []
    for kind in kinds:
        if kind not in (*EVENT_FAMILIES, "health"):
            raise ValueError(f"unknown event kind {kind!r}: one of {', '.join((*EVENT_FAMILIES, 'health'))}")
        for host in who:
            pairs.append(("health", f"{host}.heartbeat") if kind == "health" else ("events", f"{host}.{kind}.#"))
    return pairs


def parse_event(routing_key: str, body: bytes) -> Event:
    """The model for one message of ``<prefix>.events`` or ``<prefix>.health``."""
    try:
        data = json.loads(body)
    except ValueError:
        return OtherEvent(routing_key, {"raw": body.decode("utf-8", errors="replace")})
    if not isinstance(data, dict):
        return OtherEvent(routing_key, {"raw": data})
    parts = routing_key.split(".")
    family = parts[1] if len(parts) > 1 else ""
    model: Any = None
    if family == "heartbeat":
        model = Heartbeat
    elif family == "container":
        model = ContainerEvent
    elif family == "network":
        model = NetworkEvent
    elif family == "discovery":
        model = DiscoverySnapshot if data.get("type") == "discovery.snapshot" else DiscoveryEvent
    elif family == "workspace" and data.get("type") == "workspace.expired":
        model = WorkspaceExpired
    if model is None:
        return OtherEvent(routing_key, data)
    try:
        parsed: Event = _lenient(model, data)
    except (ValidationError, KeyError, TypeError):
        return OtherEvent(routing_key, data)
    return parsed
