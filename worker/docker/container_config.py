"""The container config a workspace create sends to Docker: pure functions, no Docker calls.

Hardening defaults (capabilities dropped, no new privileges, limits, ulimits, no swap, log
rotation), the ports to publish (``ports`` or the image's EXPOSE, under the same limits), the
image's labels under dockhand's prefixes neutralised, and the spec hash that tells a re-sent
create (adopt) from a different one (``conflict``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from dockhand.schemas import ErrorCode, utcnow
from dockhand.schemas.commands import MAX_PORTS, WorkspaceCreate

from ..errors import rejected
from ..labels import Labels
from ..settings import Settings

JSON = dict[str, Any]

NANO_CPUS_MIN = 10_000_000  # Docker's smallest CPU limit, 0.01 CPU
# v1.1 create fields at their defaults: left out of the spec hash (see spec_hash).
_V11_DEFAULTS: JSON = {"ttl_s": None, "on_expiry": "stop", "egress": True}


@dataclass(frozen=True)
class Target:
    """Where the container goes: its network (name and id), the CPU cap of the host, the
    labels of whatever this host makes (managed, host, owner) and the create's spec hash."""

    network: str
    network_id: str
    cpu_cap: float
    managed: dict[str, str]
    spec_hash: str


def ulimits(specs: list[str]) -> list[JSON]:
    """DOCKHAND_ULIMITS items (``name=soft[:hard]``, validated by the settings) in Docker's form."""
    out: list[JSON] = []
    for spec in specs:
        name, _, limits = spec.partition("=")
        soft, _, hard = limits.partition(":")
        out.append({"Name": name, "Soft": int(soft), "Hard": int(hard or soft)})
    return out


def spec_hash(payload: WorkspaceCreate) -> str:
    """A stable hash of what defines a workspace; how it is pulled or started does not count."""
    spec = payload.model_dump(mode="json", exclude={"pull", "registry_auth", "start"})
    # Fields added after v1 count only when set: a workspace made by an older worker keeps its
    # hash, so re-sending its unchanged create still adopts it instead of a ``conflict``.
    for mount in spec.get("mounts") or []:
        if mount.get("share") == "none":
            del mount["share"]
    for key, default in _V11_DEFAULTS.items():
        if spec.get(key) == default:
            del spec[key]
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def published_ports(p: WorkspaceCreate, image: JSON, subject: str) -> list[str]:
    """The container ports to publish: ``ports``, else the image's EXPOSE — which obeys the
    same limits (at most MAX_PORTS, no sctp), or the create is refused: an image is as
    untrusted as the command naming it."""
    if not p.egress:
        return []  # Docker publishes no port of an internal network (the create refuses `ports`)
    if p.ports is not None:
        return [str(port) for port in p.ports]
    exposed = sorted(((image.get("Config") or {}).get("ExposedPorts") or {}).keys())
    what = f"{subject}: image {p.image}"
    if len(exposed) > MAX_PORTS:
        raise rejected(
            ErrorCode.INVALID_COMMAND,
            f"{what} exposes {len(exposed)} ports, more than the {MAX_PORTS} a workspace may publish; "
            "name the ones to publish in `ports`",
        )
    sctp = [port for port in exposed if port.endswith("/sctp")]
    if sctp:
        raise rejected(
            ErrorCode.INVALID_COMMAND,
            f"{what} exposes {', '.join(sctp)}: sctp ports cannot be published; name the ports in `ports`",
        )
    return exposed


def inherited_labels(image: JSON, labels: Labels) -> dict[str, str]:
    """The image's labels under dockhand's prefixes, each overridden with an empty value.

    Docker puts an image's labels under the container's (it merges, it cannot delete), so
    an image saying ``dockhand.enabled=true`` or ``dockhand.owner=...`` would otherwise
    speak for the workspace; an empty value means "not set" to discovery and to us.
    """
    image_labels: dict[str, str] = (image.get("Config") or {}).get("Labels") or {}
    return {key: "" for key in image_labels if labels.reserved(key)}


def cap_drop(p: WorkspaceCreate, settings: Settings) -> list[str] | None:
    """DOCKHAND_CAP_DROP, minus what ``cap_add`` asks for (already checked against the
    allowed set): an allowed capability can still be added back."""
    added = {c.upper().removeprefix("CAP_") for c in p.cap_add}
    return [cap for cap in settings.cap_drop if cap not in added] or None


def container_labels(p: WorkspaceCreate, image: JSON, labels: Labels, target: Target) -> dict[str, str]:
    """The container's labels: the image's reserved ones emptied, the sender's, then ours."""
    out = inherited_labels(image, labels)
    out.update(p.labels)
    out.update(target.managed)
    now = utcnow()
    workspace = {
        labels.workspace_id: p.workspace_id,
        labels.workspace_name: p.name or p.workspace_id,
        labels.project: p.project,
        labels.stage: p.stage,
        labels.created: now.isoformat().replace("+00:00", "Z"),
        labels.spec_hash: target.spec_hash,
    }
    if not p.egress:
        workspace[labels.egress] = "false"
    if p.ttl_s is not None:
        workspace[labels.expires_at] = (now + timedelta(seconds=p.ttl_s)).isoformat().replace("+00:00", "Z")
        workspace[labels.on_expiry] = p.on_expiry
    out.update({key: value for key, value in workspace.items() if value is not None})
    if p.discovery is not None:
        out[labels.discovery("enabled")] = "true"
        out[labels.discovery("domain")] = p.discovery.domain
        out[labels.discovery("port")] = str(p.discovery.port)
        out[labels.discovery("network")] = target.network
        if p.discovery.description:
            out[labels.discovery("description")] = p.discovery.description
    return out


def host_config(p: WorkspaceCreate, ports: list[str], settings: Settings, target: Target) -> JSON:
    """The HostConfig: limits (within the settings' maxima), hardening, mounts, published ports."""
    s = settings
    cpus = min(p.resources.cpus or s.default_cpus, target.cpu_cap)
    memory = min(p.resources.memory_bytes or s.default_memory_bytes, s.max_memory_bytes)
    restart: JSON = {"Name": p.restart_policy}
    if p.restart_policy == "on-failure":
        restart["MaximumRetryCount"] = s.restart_max_retries  # Docker's 0 would mean "forever"
    config: JSON = {
        # Never 0 (= no limit at all): the schema's and the settings' minimum is Docker's 0.01.
        "NanoCpus": max(round(cpus * 1e9), NANO_CPUS_MIN),
        "Memory": memory,
        "PidsLimit": min(p.resources.pids or s.default_pids, s.max_pids),
        "SecurityOpt": ["no-new-privileges:true"],
        "CapAdd": [c.removeprefix("CAP_") for c in p.cap_add] or None,
        "CapDrop": cap_drop(p, s),
        "ReadonlyRootfs": p.read_only,
        "RestartPolicy": restart,
        "NetworkMode": target.network_id,
        "Mounts": [
            {
                "Type": m.type,
                "Target": m.target,
                "ReadOnly": m.read_only,
                **({"Source": m.source} if m.source is not None else {}),
            }
            for m in p.mounts
        ],
        "PortBindings": {port: [{"HostIp": s.publish_host_ip, "HostPort": ""}] for port in ports},
        "Ulimits": ulimits(s.ulimits) or None,
        "CgroupnsMode": s.cgroupns,
    }
    if s.disable_swap:
        config["MemorySwap"] = memory  # memory + swap = memory: no swap
    if s.log_max_size:
        config["LogConfig"] = {
            "Type": "json-file",
            "Config": {"max-size": s.log_max_size, "max-file": str(s.log_max_file)},
        }
    return config


def container_config(p: WorkspaceCreate, image: JSON, settings: Settings, labels: Labels, target: Target) -> JSON:
    """The body of ``POST /containers/create`` for a checked create (bind sources resolved)."""
    ports = published_ports(p, image, f"workspace {p.workspace_id} on {settings.host_id}")
    config: JSON = {
        "Image": p.image,
        "Env": [f"{k}={v}" for k, v in p.env.items()],
        "Labels": container_labels(p, image, labels, target),
        "ExposedPorts": {port: {} for port in ports},
        "HostConfig": host_config(p, ports, settings, target),
        "NetworkingConfig": {"EndpointsConfig": {target.network_id: {"Aliases": [p.workspace_id]}}},
    }
    optional = {"Cmd": p.command, "Entrypoint": p.entrypoint, "User": p.user, "WorkingDir": p.working_dir}
    config.update({key: value for key, value in optional.items() if value is not None})
    return config
