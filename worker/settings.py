"""The worker's one settings object, read from ``DOCKHAND_*`` environment variables."""

from __future__ import annotations

import os
import re
import secrets
import socket
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_HOST_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


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


class Settings(BaseSettings):
    """Everything configurable; see the settings table in README.md."""

    model_config = SettingsConfigDict(env_prefix="DOCKHAND_", extra="ignore", frozen=True)

    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    docker_host: str | None = Field(default_factory=lambda: os.environ.get("DOCKER_HOST"))
    host_id: str = Field(default_factory=default_host_id)
    worker_id: str | None = None
    exchange_prefix: str = "dockhand"
    label_prefix: str = "dockhand"
    discovery_label_prefix: str = "dockhand"
    container_name_prefix: str = "dockhand-"

    max_concurrency: int = Field(default=16, ge=1, le=1024)
    prefetch_per_slot: int = Field(default=2, ge=1, le=16)
    delivery_limit: int = Field(default=5, ge=1, le=1000)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    health_interval_s: float = Field(default=10.0, gt=0)
    event_queue_size: int = Field(default=10_000, ge=10)
    event_reconnect_max_s: float = Field(default=2.0, gt=0)
    reconcile_interval_s: float = Field(default=300.0, gt=0)
    discovery_require_healthy: bool = False
    docker_timeout_s: float = Field(default=60.0, gt=0)
    pull_timeout_s: float = Field(default=600.0, gt=0)
    docker_retry_attempts: int = Field(default=3, ge=1, le=10)
    docker_retry_timeout_s: float = Field(default=10.0, gt=0)
    result_cache_size: int = Field(default=10_000, ge=0)
    state_dir: Path | None = Field(default_factory=lambda: default_state_dir())

    default_network: str = "dockhand"
    publish_host_ip: str = "127.0.0.1"
    default_cpus: float = Field(default=1.0, gt=0)
    max_cpus: float = Field(default=4.0, gt=0)
    default_memory_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    max_memory_bytes: int = Field(default=8 * 1024 * 1024 * 1024, gt=0)
    default_pids: int = Field(default=512, gt=0)
    max_pids: int = Field(default=4096, gt=0)
    exec_output_limit_bytes: int = Field(default=1024 * 1024, ge=1024)

    allowed_capabilities: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_bind_roots: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_registries: Annotated[list[str], NoDecode] = Field(default_factory=list)

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8081, ge=0, le=65535)
    http_enabled: bool = True

    log_level: str = "INFO"
    log_json: bool = False

    _split = field_validator("allowed_capabilities", "allowed_bind_roots", "allowed_registries", mode="before")(
        _split_csv
    )

    @field_validator("host_id")
    @classmethod
    def _host_id(cls, value: str) -> str:
        if not _HOST_ID.match(value) or value in {"any", "all"}:
            raise ValueError(f"host id {value!r} must match {_HOST_ID.pattern} and not be any/all")
        return value

    @field_validator("exchange_prefix", "label_prefix", "discovery_label_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _PREFIX.match(value):
            raise ValueError(f"prefix {value!r} must match {_PREFIX.pattern}")
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

    @model_validator(mode="after")
    def _defaults_within_maxima(self) -> Settings:
        if self.default_cpus > self.max_cpus:
            raise ValueError("default_cpus exceeds max_cpus")
        if self.default_memory_bytes > self.max_memory_bytes:
            raise ValueError("default_memory_bytes exceeds max_memory_bytes")
        if self.default_pids > self.max_pids:
            raise ValueError("default_pids exceeds max_pids")
        return self

    @cached_property
    def effective_worker_id(self) -> str:
        """This process's id: ``DOCKHAND_WORKER_ID`` or ``<host_id>-<4 hex>``."""
        return self.worker_id or f"{self.host_id}-{secrets.token_hex(2)}"

    @property
    def prefetch(self) -> int:
        """Unacked messages per command queue: a bounded backlog for the concurrency slots."""
        return self.max_concurrency * self.prefetch_per_slot
