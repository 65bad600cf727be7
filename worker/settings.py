"""The worker's one settings object, read from ``DOCKHAND_*`` environment variables."""

from __future__ import annotations

import os
import re
import secrets
import socket
import ssl
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dockhand.amqp import split_urls

from . import tls

_HOST_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_CAPABILITY = re.compile(r"^[A-Z_]{2,32}$")
_ULIMIT = re.compile(r"^([a-z]+)=([0-9]{1,19})(?::([0-9]{1,19}))?$")
# The names Docker (and setrlimit) know.
_ULIMIT_NAMES = frozenset(
    {
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    }
)

DEFAULT_CAP_DROP = ("AUDIT_WRITE", "MKNOD", "NET_RAW", "SETFCAP", "SETPCAP", "SYS_CHROOT")
"""Dropped from Docker's default set; what remains (CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL,
NET_BIND_SERVICE, SETGID, SETUID) is what ordinary images (package installs, servers that drop
root, init scripts) need. ``cap_add`` may add a dropped one back if it is allowed."""
DEFAULT_ULIMITS = ("nofile=1024:4096", "core=0:0")
"""Open files per process (soft:hard) and no core dumps; processes are bounded by the pids limit."""


def default_host_id() -> str:
    """The machine's hostname made a valid host id (lower case, ``[a-z0-9-]``, ≤ 63)."""
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")[:63].strip("-")
    # "any" and "all" are routing targets, not hosts.
    if not name:
        return "host"
    return f"host-{name}" if name in {"any", "all"} else name


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/dockhand``, else ``~/.local/state/dockhand``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dockhand"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _must_match(pattern: re.Pattern[str], what: str, *values: str) -> None:
    """A ValueError for the first of ``values`` that ``pattern`` does not match."""
    for value in values:
        if not pattern.match(value):
            raise ValueError(f"{what} {value!r} must match {pattern.pattern}")


def _never_allowed(values: list[str], forbidden: set[str], what: str) -> list[str]:
    """``values`` unchanged, or a ValueError for one (in any case) of ``forbidden``."""
    for value in values:
        if value.lower() in forbidden:
            raise ValueError(f"{what} {value!r} can never be allowed")
    return values


class Settings(BaseSettings):
    """Everything configurable; see the settings table in README.md."""

    model_config = SettingsConfigDict(env_prefix="DOCKHAND_", extra="ignore", frozen=True)

    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    docker_host: str | None = Field(default_factory=lambda: os.environ.get("DOCKER_HOST"))
    # TLS (worker/tls.py): amqps:// is verified against this CA (else the system's), with this
    # client certificate; a tcp:// Docker host uses DOCKER_CERT_PATH's ca/cert/key.pem.
    amqp_ca_file: Path | None = None
    amqp_cert_file: Path | None = None
    amqp_key_file: Path | None = None
    # Docker's own convention: any non-empty DOCKER_TLS_VERIFY turns verification on.
    docker_tls_verify: bool = Field(default_factory=lambda: bool(os.environ.get("DOCKER_TLS_VERIFY")))
    docker_cert_path: Path | None = Field(
        default_factory=lambda: Path(os.environ["DOCKER_CERT_PATH"]) if os.environ.get("DOCKER_CERT_PATH") else None
    )
    docker_allow_plaintext_tcp: bool = False
    host_id: str = Field(default_factory=default_host_id)
    worker_id: str | None = None
    exchange_prefix: str = "dockhand"
    label_prefix: str = "dockhand"
    discovery_label_prefix: str = "dockhand"
    container_name_prefix: str = "dockhand-"

    max_concurrency: int = Field(default=16, ge=1, le=1024)
    # workspace.exec runs in a pool of its own (default: as many as max_concurrency), so long
    # execs never hold the slots every other command needs; see exec_slots.
    max_concurrent_execs: int | None = Field(default=None, ge=1, le=1024)
    prefetch_per_slot: int = Field(default=2, ge=1, le=16)
    delivery_limit: int = Field(default=5, ge=1, le=1000)
    # None: derived from max_file_bytes (see body_limit), so a full put_files always fits.
    max_body_bytes: int | None = Field(default=None, ge=1024)
    max_file_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    health_interval_s: float = Field(default=10.0, gt=0)
    event_queue_size: int = Field(default=10_000, ge=10)
    event_reconnect_max_s: float = Field(default=2.0, gt=0)
    reconcile_interval_s: float = Field(default=300.0, gt=0)
    # Workspace lifetime (contract v1.1): deadlines are re-read from Docker this often (a create
    # or extend on this worker wakes the loop at once); an expiring workspace gets this long to stop.
    expiry_rescan_s: float = Field(default=30.0, gt=0)
    expiry_stop_timeout_s: int = Field(default=2, ge=0, le=3600)
    max_workspaces: int | None = Field(default=None, ge=1)
    # Where snapshots are named: <repository>/<workspace_id>:<tag> (never pulled, never pushed).
    # Garbage (see worker/docker/garbage.py): reported every gc_interval_s, removed only with gc.
    gc: bool = False
    gc_interval_s: float = Field(default=300.0, gt=0)
    gc_grace_s: float = Field(default=3600.0, ge=0)
    snapshot_max_age_s: float | None = Field(default=None, gt=0)
    snapshot_repository: str = Field(default="dockhand-snapshots", pattern=r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
    discovery_require_healthy: bool = False
    docker_timeout_s: float = Field(default=60.0, gt=0)
    pull_timeout_s: float = Field(default=600.0, gt=0)
    docker_retry_attempts: int = Field(default=3, ge=1, le=10)
    docker_retry_timeout_s: float = Field(default=10.0, gt=0)
    result_cache_size: int = Field(default=10_000, ge=0)
    state_dir: Path | None = Field(default_factory=lambda: default_state_dir())

    default_network: str = "dockhand"
    publish_host_ip: str = "127.0.0.1"
    # Docker's minima (0.01 CPU, 6 MiB): below them a limit is refused, or rounds to "none".
    # (The maxima are at least the defaults, so at least the minima too.)
    default_cpus: float = Field(default=1.0, ge=0.01)
    max_cpus: float = Field(default=4.0, gt=0)
    default_memory_bytes: int = Field(default=512 * 1024 * 1024, ge=6 * 1024 * 1024)
    max_memory_bytes: int = Field(default=8 * 1024 * 1024 * 1024, gt=0)
    default_pids: int = Field(default=512, gt=0)
    max_pids: int = Field(default=4096, gt=0)
    exec_output_limit_bytes: int = Field(default=1024 * 1024, ge=1024)

    # Hardening defaults of every workspace (README, "Workspace defaults and what they block").
    cap_drop: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_CAP_DROP))
    disable_swap: bool = True
    restart_max_retries: int = Field(default=5, ge=1, le=1000)  # Docker reads 0 as "unlimited"
    ulimits: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_ULIMITS))
    log_max_size: str = "10m"
    log_max_file: int = Field(default=3, ge=1, le=100)
    cgroupns: Literal["private", "host"] = "private"

    allowed_capabilities: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_bind_roots: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_registries: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Networks a workspace may join besides the ones this host manages (by exact name).
    allowed_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Drivers `network.ensure` may create: macvlan/ipvlan put a workspace on the host's L2
    # segment, overlay spans hosts; only bridge keeps a workspace on this host's own bridge.
    allowed_network_drivers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["bridge"])

    # Tenancy (contract v1.1): "user" takes each command's sender from its AMQP user_id.
    tenancy: Literal["none", "user"] = "none"
    admin_users: Annotated[list[str], NoDecode] = Field(default_factory=list)

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8081, ge=0, le=65535)
    http_enabled: bool = True

    log_level: str = "INFO"
    log_json: bool = False

    _split = field_validator(
        "allowed_capabilities",
        "allowed_bind_roots",
        "allowed_registries",
        "allowed_networks",
        "allowed_network_drivers",
        "cap_drop",
        "ulimits",
        mode="before",
    )(_split_csv)

    @field_validator("cap_drop")
    @classmethod
    def _cap_drop(cls, value: list[str]) -> list[str]:
        caps = sorted({c.upper().removeprefix("CAP_") for c in value})
        _must_match(_CAPABILITY, "capability", *caps)
        return caps

    @field_validator("ulimits")
    @classmethod
    def _ulimits(cls, value: list[str]) -> list[str]:
        for item in value:
            match = _ULIMIT.match(item)
            if not match:
                raise ValueError(f"ulimit {item!r} must be <name>=<soft>[:<hard>], name one of {sorted(_ULIMIT_NAMES)}")
            name, soft, hard = match.group(1), int(match.group(2)), int(match.group(3) or match.group(2))
            if name not in _ULIMIT_NAMES:
                raise ValueError(f"ulimit {item!r}: unknown name {name!r} (one of {sorted(_ULIMIT_NAMES)})")
            if soft > hard:
                raise ValueError(f"ulimit {item!r}: soft limit above the hard limit")
        return value

    @field_validator("log_max_size")
    @classmethod
    def _log_max_size(cls, value: str) -> str:
        if value and not re.fullmatch(r"[1-9][0-9]{0,8}[kmg]?", value):
            raise ValueError(f"log max size {value!r} must be a size such as 10m (k, m, g), or empty for no cap")
        return value

    _split_admins = field_validator("admin_users", mode="before")(_split_csv)

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        # Contract v1.1: a comma-separated list of the nodes of one cluster. A list that does not
        # parse is a settings error (one line at start), not a traceback from aio-pika.
        urls = split_urls(value)
        if len({tls.url_scheme(url) for url in urls}) > 1:
            raise ValueError("the nodes of one cluster take one scheme: all amqp:// or all amqps://")
        return value

    @field_validator("host_id")
    @classmethod
    def _host_id(cls, value: str) -> str:
        if not _HOST_ID.match(value) or value in {"any", "all"}:
            raise ValueError(f"host id {value!r} must match {_HOST_ID.pattern} and not be any/all")
        return value

    @field_validator("exchange_prefix", "label_prefix", "discovery_label_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        _must_match(_PREFIX, "prefix", value)
        return value

    @field_validator("allowed_capabilities")
    @classmethod
    def _caps(cls, value: list[str]) -> list[str]:
        return sorted({c.upper().removeprefix("CAP_") for c in value})

    @field_validator("allowed_bind_roots")
    @classmethod
    def _roots(cls, value: list[str]) -> list[str]:
        for root in value:
            if not PurePosixPath(root).is_absolute():
                raise ValueError(f"bind root {root!r} must be an absolute path")
        return [str(PurePosixPath(root)) for root in value]

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        # Docker's host and none networks are never joinable: they are no isolation at all.
        return _never_allowed(value, {"host", "none"}, "network")

    @field_validator("allowed_network_drivers")
    @classmethod
    def _drivers(cls, value: list[str]) -> list[str]:
        return _never_allowed(value, {"host", "null"}, "network driver")

    @model_validator(mode="after")
    def _defaults_within_maxima(self) -> Settings:
        if self.default_cpus > self.max_cpus:
            raise ValueError("default_cpus exceeds max_cpus")
        if self.default_memory_bytes > self.max_memory_bytes:
            raise ValueError("default_memory_bytes exceeds max_memory_bytes")
        if self.default_pids > self.max_pids:
            raise ValueError("default_pids exceeds max_pids")
        return self

    @model_validator(mode="after")
    def _tls(self) -> Settings:
        # Certificates are loaded once here so that a bad file is a settings error at start-up.
        _ = self.amqp_ssl_context, self.docker_endpoint
        return self

    @cached_property
    def amqp_ssl_context(self) -> ssl.SSLContext | None:
        """The broker connections' TLS context (None for ``amqp://``); see worker/tls.py."""
        contexts = [
            tls.amqp_context(url, self.amqp_ca_file, self.amqp_cert_file, self.amqp_key_file) for url in self.amqp_urls
        ]
        return contexts[0]  # the same settings for every node: each URL checked, one context used

    @property
    def amqp_urls(self) -> list[str]:
        """The broker nodes of ``DOCKHAND_AMQP_URL`` (one URL or a comma-separated list)."""
        return split_urls(self.amqp_url)

    @cached_property
    def docker_endpoint(self) -> tls.DockerEndpoint:
        """Where and how the Docker client connects (URL, TLS); see worker/tls.py."""
        return tls.docker_endpoint(
            self.docker_host or tls.DEFAULT_DOCKER_URL,
            tls_verify=self.docker_tls_verify,
            cert_path=self.docker_cert_path,
            allow_plaintext_tcp=self.docker_allow_plaintext_tcp,
        )

    @cached_property
    def effective_worker_id(self) -> str:
        """This process's id: ``DOCKHAND_WORKER_ID`` or ``<host_id>-<4 hex>``."""
        return self.worker_id or f"{self.host_id}-{secrets.token_hex(2)}"

    @property
    def body_limit(self) -> int:
        """The largest command body taken: ``DOCKHAND_MAX_BODY_BYTES`` when set, else enough for
        ``max_file_bytes`` as base64 (4/3 of it) plus 1 MiB for paths and the envelope."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return -(-self.max_file_bytes // 3) * 4 + 1024 * 1024

    @property
    def exec_slots(self) -> int:
        """How many ``workspace.exec`` may be running or waiting (in their workspace's lane) at once."""
        return self.max_concurrent_execs or self.max_concurrency

    @property
    def prefetch(self) -> int:
        """Unacked messages per command queue: a bounded backlog for the concurrency slots."""
        return self.max_concurrency * self.prefetch_per_slot
