"""Label names, derived once from the configured prefixes."""

from __future__ import annotations

from dataclasses import dataclass


class _Key:
    """A label key under the managed prefix: ``Labels.host`` reads ``<prefix>.host``."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    def __get__(self, labels: Labels, owner: type | None = None) -> str:
        return f"{labels.prefix}.{self.suffix}"


@dataclass(frozen=True, slots=True)
class Labels:
    """Managed-container and discovery label keys for one worker configuration."""

    prefix: str
    discovery_prefix: str

    managed = _Key("managed")
    host = _Key("host")
    """With ``managed``: the host whose workers may touch the object (and nothing else)."""
    workspace_id = _Key("workspace.id")
    workspace_name = _Key("workspace.name")
    project = _Key("project")
    stage = _Key("stage")
    created = _Key("created")
    """When dockhand made the object (ISO 8601, UTC)."""
    spec_hash = _Key("spec-hash")
    """The create request's hash: a repeated create adopts only a workspace of the same spec."""
    volume_share = _Key("volume.share")
    """On a volume: who besides its creating workspace may mount it (``project``)."""
    expires_at = _Key("expires-at")
    """A workspace's deadline (``ttl_s``; on a lease volume, one moved by ``workspace.extend``)."""
    on_expiry = _Key("on-expiry")
    lease_of = _Key("lease.of")
    """On a lease volume: the workspace whose deadline it moves ..."""
    lease_container = _Key("lease.container")
    """... and that workspace's container (a lease of an earlier container means nothing)."""
    egress = _Key("egress")
    """On a workspace: ``false`` when it may join only egress-free networks."""
    snapshot_of = _Key("snapshot.of")
    """On an image: the workspace this host's snapshot was taken of."""
    owner = _Key("owner")
    """The sender that created the object (tenancy on)."""

    def discovery(self, name: str) -> str:
        """``<discovery prefix>.<name>``: enabled, domain, port, description, network."""
        return f"{self.discovery_prefix}.{name}"

    def reserved(self, key: str) -> bool:
        """Whether a label would collide with labels dockhand writes itself (in any case:
        ``Dockhand.managed`` is refused too, so nothing can be made to look like ours)."""
        lowered = key.lower()
        return any(
            lowered == p or lowered.startswith(p + ".") for p in (self.prefix.lower(), self.discovery_prefix.lower())
        )

    def is_managed_by(self, labels: dict[str, str] | None, host_id: str) -> bool:
        """Whether a container or network with these labels is this host's to touch."""
        labels = labels or {}
        return labels.get(self.managed) == "true" and labels.get(self.host) == host_id
