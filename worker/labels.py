"""Label names, derived once from the configured prefixes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Labels:
    """Managed-container and discovery label keys for one worker configuration."""

    prefix: str
    discovery_prefix: str

    @property
    def managed(self) -> str:
        return f"{self.prefix}.managed"

    @property
    def host(self) -> str:
        return f"{self.prefix}.host"

    @property
    def workspace_id(self) -> str:
        return f"{self.prefix}.workspace.id"

    @property
    def workspace_name(self) -> str:
        return f"{self.prefix}.workspace.name"

    @property
    def project(self) -> str:
        return f"{self.prefix}.project"

    @property
    def stage(self) -> str:
        return f"{self.prefix}.stage"

    @property
    def created(self) -> str:
        return f"{self.prefix}.created"

    @property
    def spec_hash(self) -> str:
        return f"{self.prefix}.spec-hash"

    @property
    def volume_share(self) -> str:
        """On a volume: who besides its creating workspace may mount it (``project``)."""
        return f"{self.prefix}.volume.share"

    @property
    def owner(self) -> str:
        """``<prefix>.owner``: the sender that created the object (tenancy on)."""
        return f"{self.prefix}.owner"

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
