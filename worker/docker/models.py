"""Contract models from Docker's answers (container, image and host inspects): pure functions."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiodocker.containers import DockerContainer

from dockhand.schemas.results import HostInfo, ImageInfo, ImagePulled, PortBinding, Workspace

from ..labels import Labels

JSON = dict[str, Any]

_NEVER = "0001-01-01T00:00:00Z"


def parse_docker_time(value: str | None) -> datetime | None:
    """Docker's RFC 3339 times carry nanoseconds; Python takes microseconds."""
    if not value or value.startswith(_NEVER[:10]):
        return None
    head, dot, rest = value.partition(".")
    if dot:
        # Only the fraction's leading digits: an offset such as "+02:00" has digits too.
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        zone = rest[len(digits) :]
        value = f"{head}.{digits[:6]}{zone}"
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.astimezone(UTC)


def listed(container: DockerContainer, key: str, default: Any) -> Any:
    """A field of a container-list entry (DockerContainer has item access but no ``get``)."""
    return container[key] if key in container else default  # noqa: SIM401


def _ports(network_settings: JSON) -> list[PortBinding]:
    return [
        PortBinding(
            container_port=int(port.split("/")[0]),
            protocol=port.split("/")[1] if "/" in port else "tcp",
            host_ip=binding.get("HostIp", ""),
            host_port=int(binding["HostPort"]),
        )
        for port, bindings in sorted((network_settings.get("Ports") or {}).items())
        for binding in bindings or []
        if binding.get("HostPort")
    ]


def workspace(
    info: JSON, labels: Labels, host_id: str, *, created: bool | None = None, expires_at: datetime | None = None
) -> Workspace:
    """The contract's ``workspace`` object from a container inspect."""
    values: dict[str, str] = info["Config"].get("Labels") or {}
    state = info.get("State") or {}
    network_settings = info.get("NetworkSettings") or {}
    networks = {
        name: endpoint.get("IPAddress") or ""
        for name, endpoint in sorted((network_settings.get("Networks") or {}).items())
    }
    return Workspace(
        workspace_id=values.get(labels.workspace_id, ""),
        name=values.get(labels.workspace_name),
        container_id=info["Id"],
        container_name=info["Name"].lstrip("/"),
        host_id=host_id,
        image=info["Config"].get("Image", ""),
        image_id=info.get("Image", ""),
        state=state.get("Status", "unknown"),
        health=(state.get("Health") or {}).get("Status"),
        created=created,
        ports=_ports(network_settings),
        networks=networks,
        labels=values,
        # An empty value is an image's label we overrode (see container_config): not set.
        project=values.get(labels.project) or None,
        stage=values.get(labels.stage) or None,
        owner=values.get(labels.owner) or None,
        created_at=parse_docker_time(info.get("Created")),
        started_at=parse_docker_time(state.get("StartedAt")),
        expires_at=expires_at,
    )


def image_pulled(image: str, info: JSON) -> ImagePulled:
    """The ``image.pull`` result: the image's id and the digest of the repository pulled."""
    repo = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image.split("@")[0]
    digests: list[str] = info.get("RepoDigests") or []
    digest = next((d.split("@", 1)[1] for d in digests if d.startswith(repo + "@")), None)
    if digest is None and digests:
        digest = digests[0].split("@", 1)[1]
    return ImagePulled(image=image, image_id=info["Id"], digest=digest)


def image_info(info: JSON) -> ImageInfo:
    """The ``image.inspect`` result from an image inspect."""
    config = info.get("Config") or {}
    return ImageInfo(
        image_id=info["Id"],
        exposed_ports=sorted((config.get("ExposedPorts") or {}).keys()),
        healthcheck=config.get("Healthcheck"),
        labels=config.get("Labels") or {},
        created=parse_docker_time(info.get("Created")),
        size=int(info.get("Size") or 0),
    )


def host_info(host_id: str, info: Mapping[str, Any], version: Mapping[str, Any]) -> HostInfo:
    """The ``host.info`` result from ``/info`` and ``/version``."""
    return HostInfo(
        host_id=host_id,
        docker_version=str(version.get("Version", "")),
        api_version=str(version.get("ApiVersion", "")),
        os=str(info.get("OperatingSystem", "")),
        cpus=int(info.get("NCPU") or 0),
        memory_bytes=int(info.get("MemTotal") or 0),
        containers=int(info.get("Containers") or 0),
    )
